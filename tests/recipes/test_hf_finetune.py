"""A Hugging Face checkpoint in, SFT through the recipe, a Hugging Face checkpoint out."""

import json
import os

import numpy as np
import pytest

torch = pytest.importorskip(
  "torch", reason="need torch and transformers: pip install -e '.[interop]'"
)
transformers = pytest.importorskip("transformers", reason="need transformers")

from jaxpost import config_lib  # noqa: E402
from jaxpost.models import hf  # noqa: E402
from jaxpost.recipes import sft  # noqa: E402

SFT_TINY = os.path.join(os.path.dirname(__file__), "..", "..", "configs", "sft.py") + ":tiny"


def _hf_tokenizer_json(path, corpus):
  from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

  tok = Tokenizer(models.BPE())
  tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
  tok.decoder = decoders.ByteLevel()
  trainer = trainers.BpeTrainer(
    vocab_size=300,
    special_tokens=["<pad>", "<s>", "</s>", "<think>", "</think>"],
    initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    show_progress=False,
  )
  tok.train_from_iterator(corpus, trainer)
  tok.save(str(path))
  return tok.get_vocab_size()


def _qwen_dir(tmp_path):
  from jaxpost.data import tasks

  out = tmp_path / "qwen"
  out.mkdir()
  vocab = _hf_tokenizer_json(
    out / "tokenizer.json", list(tasks.training_corpus(("mul2x2",), 300, 0))
  )
  (out / "tokenizer_config.json").write_text(
    json.dumps({"eos_token": "</s>", "bos_token": "<s>", "pad_token": "<pad>"})
  )
  cfg = transformers.Qwen2Config(
    vocab_size=vocab,
    hidden_size=32,
    intermediate_size=64,
    num_hidden_layers=1,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=256,
    tie_word_embeddings=False,
  )
  torch.manual_seed(0)
  transformers.Qwen2ForCausalLM(cfg).save_pretrained(out)
  return out


def test_load_finetune_export_roundtrip(tmp_path):
  src = _qwen_dir(tmp_path)
  c = config_lib.load_config(SFT_TINY)
  c.model.hf_dir = str(src)
  c.train.export_hf = True
  c.train.steps = 3
  c.train.log_every = 1
  c.train.progress = False
  c.data.batch_size = 8
  c.data.seq_len = 96
  c.data.overlong = "truncate"
  c.eval.num_examples = 4
  c.eval.batch_size = 4
  c.eval.max_new_tokens = 4
  result = sft.run(c, str(tmp_path / "run"))
  assert result["step"] == 3 and np.isfinite(result["train/loss"])

  # The export loads in transformers and computes what our trained model computes.
  out = result["hf_dir"]
  theirs = transformers.AutoModelForCausalLM.from_pretrained(out).eval()
  ours = hf.load_model(out)
  before = hf.load_model(str(src))
  tokens = np.random.default_rng(0).integers(0, ours.config.vocab_size, (2, 12))
  with torch.no_grad():
    ref = theirs(torch.tensor(tokens)).logits.numpy()
  np.testing.assert_allclose(np.asarray(ours(tokens)), ref, atol=1e-4)
  # ... and training changed it.
  assert np.abs(np.asarray(before(tokens)) - ref).max() > 1e-4
  # The tokenizer came from the checkpoint and went back out with it.
  assert (tmp_path / "run" / "hf" / "tokenizer.json").exists()


def test_missing_hf_dir_is_a_config_error(tmp_path):
  c = config_lib.load_config(SFT_TINY)
  c.model.hf_dir = str(tmp_path)
  with pytest.raises(config_lib.ConfigError, match="config.json"):
    config_lib.validate(c)
