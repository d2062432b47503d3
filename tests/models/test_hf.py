"""HF checkpoint import/export: logit and greedy-decoding parity with transformers.

The parity tests build small randomly initialised transformers models (torch CPU, f32)
and need the ``interop`` extra (torch, transformers); they skip without it. The config
mapping, bfloat16 round trip and error tests need neither and always run.
"""

import dataclasses
import functools
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import tokenizers
from flax import nnx
from safetensors.numpy import load_file, save_file

from jaxpost.data.tokenizer import HFTokenizer
from jaxpost.models import Decoder, ModelConfig, named_config
from jaxpost.models import hf as hf_lib
from jaxpost.models.config import RopeScaling
from jaxpost.models.decoder import rope_frequencies
from jaxpost.rollout.sampler import generate, left_pad

LOGIT_TOL = 1e-4  # max |logit difference| in float32
VOCAB = 97
EOS = 96
SMALL = dict(
  vocab_size=VOCAB,
  hidden_size=64,
  intermediate_size=128,
  num_hidden_layers=2,
  num_attention_heads=4,
  num_key_value_heads=2,
  max_position_embeddings=128,
  rms_norm_eps=1e-5,
)
# name -> (architecture, extra config.json keys, save with shards).
VARIANTS = {
  "llama-untied-llama3": (
    "LlamaForCausalLM",
    dict(
      tie_word_embeddings=False,
      rope_theta=10000.0,
      # original context 32 so the scaling changes short sequences measurably.
      rope_scaling=dict(
        rope_type="llama3",
        factor=8.0,
        low_freq_factor=1.0,
        high_freq_factor=4.0,
        original_max_position_embeddings=32,
      ),
    ),
    False,
  ),
  "llama-tied-linear": (
    "LlamaForCausalLM",
    dict(tie_word_embeddings=True, rope_theta=500.0, rope_scaling=dict(type="linear", factor=2.0)),
    False,
  ),
  "qwen2-bias": ("Qwen2ForCausalLM", dict(tie_word_embeddings=False, rope_theta=1e6), False),
  "qwen3-qknorm-yarn-sharded": (
    "Qwen3ForCausalLM",
    dict(
      head_dim=24,  # != hidden_size / num_attention_heads
      tie_word_embeddings=True,
      rope_theta=10000.0,
      rope_scaling=dict(rope_type="yarn", factor=4.0, original_max_position_embeddings=32),
    ),
    True,
  ),
}


def _interop():
  """(torch, transformers), or skip the test."""
  reason = "HF parity tests need torch and transformers: pip install -e '.[interop]'"
  torch = pytest.importorskip("torch", reason=reason)
  transformers = pytest.importorskip("transformers", reason=reason)
  return torch, transformers


def _hf_model(arch: str, extra: dict, seed: int):
  """A transformers model with every parameter (norms and biases too) random, O(1) logits."""
  torch, transformers = _interop()
  config = transformers.AutoConfig.for_model(hf_lib.ARCHITECTURES[arch], **SMALL, **extra)
  config.architectures = [arch]
  torch.manual_seed(seed)
  model = transformers.AutoModelForCausalLM.from_config(
    config, attn_implementation="eager", dtype=torch.float32
  )
  with torch.no_grad():
    for name, p in model.named_parameters():
      noise = torch.randn(p.shape, dtype=torch.float32)
      if "norm" in name:
        p.copy_(1.0 + 0.2 * noise)
      elif "embed" in name:
        p.copy_(0.5 * noise)
      else:
        p.copy_(0.2 * noise)
  return model.eval()


@pytest.fixture(scope="module", params=sorted(VARIANTS))
def variant(request, tmp_path_factory):
  """(name, transformers model, its save directory, our imported Decoder)."""
  name = request.param
  arch, extra, sharded = VARIANTS[name]
  hf_model = _hf_model(arch, extra, seed=sorted(VARIANTS).index(name))
  path = tmp_path_factory.mktemp(name)
  hf_model.save_pretrained(path, max_shard_size="100KB" if sharded else "50GB")
  assert (path / hf_lib.INDEX_FILE).is_file() == sharded
  return name, hf_model, path, hf_lib.load_model(path)


@functools.partial(jax.jit, static_argnames="graphdef")
def _logits(graphdef, state, tokens, segment_ids):
  return nnx.merge(graphdef, state)(tokens, segment_ids=segment_ids)


def our_logits(model: Decoder, tokens: np.ndarray, mask: np.ndarray) -> np.ndarray:
  graphdef, state = nnx.split(model)
  return np.asarray(_logits(graphdef, state, jnp.asarray(tokens), jnp.asarray(mask)))


def hf_logits(hf_model, tokens: np.ndarray, mask: np.ndarray) -> np.ndarray:
  torch, _ = _interop()
  with torch.no_grad():
    out = hf_model(input_ids=torch.tensor(tokens), attention_mask=torch.tensor(mask))
  return out.logits.float().numpy()


def right_padded_batch(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
  """i32[3, 12] tokens (pad 0 after each row's end) and their {0,1} mask."""
  rng = np.random.default_rng(seed)
  lengths = [12, 7, 3]
  tokens = np.zeros((3, 12), np.int64)
  mask = np.zeros((3, 12), np.int64)
  for row, n in enumerate(lengths):
    tokens[row, :n] = rng.integers(1, VOCAB, n)
    mask[row, :n] = 1
  return tokens, mask


def with_config(model: Decoder, **changes) -> Decoder:
  """The same parameters under a changed config (e.g. without RoPE scaling)."""
  config = dataclasses.replace(model.config, **changes)
  graphdef, _ = nnx.split(nnx.eval_shape(lambda: Decoder(config, rngs=nnx.Rngs(0))))
  return nnx.merge(graphdef, nnx.state(model))


# ----------------------------------------------------------------------------- parity


def test_imported_config(variant):
  name, hf_model, _, model = variant
  c, hc = model.config, hf_model.config
  assert (c.vocab_size, c.d_model, c.n_layers, c.n_heads, c.n_kv_heads) == (VOCAB, 64, 2, 4, 2)
  assert c.head_dim == (24 if name.startswith("qwen3") else 16)
  assert c.tie_embeddings == hc.tie_word_embeddings
  assert c.attn_bias == name.startswith("qwen2")
  assert c.qk_norm == name.startswith("qwen3")
  assert c.norm_eps == 1e-5 and c.max_seq_len == 128
  expected_scaling = {"llama3": "llama3", "linear": "linear", "yarn": "yarn"}
  kinds = [v for k, v in expected_scaling.items() if k in name]
  assert (c.rope_scaling.rope_type if c.rope_scaling else None) == (kinds[0] if kinds else None)


def test_logits_match_transformers(variant):
  name, hf_model, _, model = variant
  tokens, mask = right_padded_batch()
  ours, ref = our_logits(model, tokens, mask), hf_logits(hf_model, tokens, mask)
  real = mask.astype(bool)
  assert ref[real].std() > 0.5  # logits large enough for the tolerance to mean something
  assert np.abs(ours[real] - ref[real]).max() <= LOGIT_TOL
  if model.config.rope_scaling is not None:
    # The scaling is exercised: without it the logits move far past the tolerance.
    unscaled = our_logits(with_config(model, rope_scaling=None), tokens, mask)
    assert np.abs(unscaled[real] - ref[real]).max() > 100 * LOGIT_TOL


def test_greedy_generation_matches_transformers(variant):
  torch, _ = _interop()
  _, hf_model, _, model = variant
  rng = np.random.default_rng(1)
  prompts = [rng.integers(1, EOS, n).tolist() for n in (5, 2, 8)]
  new = 8
  tokens, mask = left_pad(prompts, pad_id=0)
  out = generate(model, tokens, mask, max_new_tokens=new, eos_id=EOS, pad_id=0)
  for row, prompt in enumerate(prompts):
    with torch.no_grad():
      ref = hf_model.generate(
        input_ids=torch.tensor([prompt]),
        attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
        max_new_tokens=new,
        do_sample=False,
        eos_token_id=EOS,
        pad_token_id=0,
      )[0, len(prompt) :].tolist()
    ref += [0] * (new - len(ref))
    assert np.asarray(out.tokens[row]).tolist() == ref, (row, prompt)


def test_export_loads_in_transformers(variant, tmp_path):
  torch, transformers = _interop()
  name, hf_model, _, model = variant
  shard_bytes = 60_000 if "sharded" in name else hf_lib.DEFAULT_MAX_SHARD_BYTES
  written = hf_lib.save_model(model, tmp_path, max_shard_bytes=shard_bytes)
  assert (tmp_path / hf_lib.INDEX_FILE in written) == ("sharded" in name)
  reloaded = transformers.AutoModelForCausalLM.from_pretrained(
    tmp_path, attn_implementation="eager", dtype=torch.float32
  ).eval()
  assert type(reloaded) is type(hf_model)
  tokens, mask = right_padded_batch(seed=2)
  real = mask.astype(bool)
  got, ref = hf_logits(reloaded, tokens, mask), hf_logits(hf_model, tokens, mask)
  # Same f32 weights and same math: only the config round trip could change anything.
  assert np.abs(got[real] - ref[real]).max() <= 1e-5
  # And back: our import of our export is bit-identical.
  again = hf_lib.load_model(tmp_path)
  assert again.config == model.config
  for (p, a), (_, b) in zip(
    nnx.to_flat_state(nnx.state(model)), nnx.to_flat_state(nnx.state(again)), strict=True
  ):
    assert np.array_equal(np.asarray(a.get_value()), np.asarray(b.get_value())), p


def test_bfloat16_checkpoint_from_transformers(tmp_path):
  torch, transformers = _interop()
  arch, extra, _ = VARIANTS["qwen2-bias"]
  _hf_model(arch, extra, seed=7).to(torch.bfloat16).save_pretrained(tmp_path)
  model = hf_lib.load_model(tmp_path)
  assert model.config.param_dtype == model.config.dtype == "bfloat16"
  ref = transformers.AutoModelForCausalLM.from_pretrained(
    tmp_path, attn_implementation="eager", dtype=torch.float32
  ).eval()
  ref_embed = ref.model.embed_tokens.weight.detach().numpy()
  assert np.array_equal(np.asarray(model.embed[...]).astype(np.float32), ref_embed)
  # bfloat16 weights widened to float32 on load compute the same logits as transformers.
  wide = hf_lib.load_model(tmp_path, param_dtype=jnp.float32)
  assert wide.config.param_dtype == wide.config.dtype == "float32"
  tokens, mask = right_padded_batch(seed=3)
  real = mask.astype(bool)
  diff = our_logits(wide, tokens, mask)[real] - hf_logits(ref, tokens, mask)[real]
  assert np.abs(diff).max() <= LOGIT_TOL


@pytest.mark.parametrize(
  "rope_scaling",
  [
    dict(rope_type="linear", factor=4.0),
    dict(
      rope_type="llama3",
      factor=32.0,
      low_freq_factor=1.0,
      high_freq_factor=4.0,
      original_max_position_embeddings=64,
    ),
    dict(rope_type="yarn", factor=8.0, original_max_position_embeddings=64),
    dict(
      rope_type="yarn",
      factor=4.0,
      original_max_position_embeddings=48,
      beta_fast=16.0,
      beta_slow=2.0,
      truncate=False,
    ),
    dict(
      rope_type="yarn",
      factor=40.0,
      original_max_position_embeddings=64,
      mscale=1.0,
      mscale_all_dim=0.707,
    ),
    dict(rope_type="yarn", factor=2.0, original_max_position_embeddings=64, attention_factor=1.3),
  ],
)
def test_rope_frequencies_match_transformers(rope_scaling):
  _, transformers = _interop()
  from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

  hf = {**SMALL, "model_type": "llama", "head_dim": 32, "rope_theta": 10000.0}
  hf.update(max_position_embeddings=256, rope_scaling=rope_scaling)
  config = hf_lib.config_from_hf({**hf, "architectures": ["LlamaForCausalLM"]})
  ours, factor = rope_frequencies(config.head_dim, config.rope_theta, config.rope_scaling)
  hf_config = transformers.LlamaConfig.from_dict(hf)
  ref, ref_factor = ROPE_INIT_FUNCTIONS[rope_scaling["rope_type"]](hf_config, None)
  np.testing.assert_allclose(ours, ref.numpy(), rtol=2e-6)
  assert factor == pytest.approx(ref_factor, rel=1e-6)
  plain, _ = rope_frequencies(config.head_dim, config.rope_theta)
  assert not np.allclose(ours, plain, rtol=1e-3)  # the case really scales something


def test_tokenizer_export(tmp_path):
  _, transformers = _interop()
  model = random_decoder(TINY, seed=3)
  tokenizer = word_tokenizer()
  hf_lib.save_model(model, tmp_path, tokenizer=tokenizer)
  saved = json.loads((tmp_path / "config.json").read_text())
  assert (saved["eos_token_id"], saved["pad_token_id"], saved["bos_token_id"]) == (1, 0, 2)
  reloaded, ours = hf_lib.load_model_and_tokenizer(tmp_path)
  assert isinstance(ours, HFTokenizer)
  assert (ours.eos_id, ours.pad_id, ours.bos_id) == (1, 0, 2)
  text = "w3 w17 w3 w40"
  assert ours.encode(text) == tokenizer.encode(text) == [7, 21, 7, 44]
  hf_tok = transformers.AutoTokenizer.from_pretrained(tmp_path)
  assert hf_tok.encode(text, add_special_tokens=False) == [7, 21, 7, 44]
  assert hf_tok.eos_token_id == 1 and hf_tok.pad_token_id == 0
  assert reloaded.config == model.config


# ----------------------------------------------------------------------------- no torch needed

TINY = ModelConfig(
  vocab_size=VOCAB,
  d_model=32,
  n_layers=2,
  n_heads=4,
  n_kv_heads=2,
  head_dim=8,
  mlp_dim=48,
  max_seq_len=64,
  norm_eps=1e-5,
)


def random_decoder(config: ModelConfig, seed: int) -> Decoder:
  """Decoder with random NumPy parameters (no jitted init)."""
  graphdef, state = nnx.split(nnx.eval_shape(lambda: Decoder(config, rngs=nnx.Rngs(0))))
  rng = np.random.default_rng(seed)
  flat = [
    (p, v.replace(jnp.asarray(rng.standard_normal(v.get_value().shape), v.get_value().dtype)))
    for p, v in nnx.to_flat_state(state)
  ]
  return nnx.merge(graphdef, nnx.from_flat_state(flat))


def word_tokenizer() -> HFTokenizer:
  """WordLevel tokenizer: <pad> 0, </s> 1, <s> 2, <unk> 3, then w0..w92."""
  vocab = {"<pad>": 0, "</s>": 1, "<s>": 2, "<unk>": 3}
  vocab.update({f"w{i}": 4 + i for i in range(VOCAB - 4)})
  tok = tokenizers.Tokenizer(tokenizers.models.WordLevel(vocab, unk_token="<unk>"))
  tok.pre_tokenizer = tokenizers.pre_tokenizers.WhitespaceSplit()
  tok.add_special_tokens(["<pad>", "</s>", "<s>", "<unk>"])
  return HFTokenizer(tok, pad_id=0, bos_id=2, eos_id=1)


@pytest.mark.parametrize(
  "name, overrides",
  [
    ("llama-tied-bf16", dict(tie_embeddings=True, param_dtype="bfloat16", dtype="bfloat16")),
    ("qwen3-bias", dict(qk_norm=True, attn_bias=True)),
  ],
)
def test_save_load_round_trip(name, overrides, tmp_path):
  config = dataclasses.replace(TINY, **overrides)
  model = random_decoder(config, seed=4)
  hf_lib.save_model(model, tmp_path, max_shard_bytes=10_000)
  hf = json.loads((tmp_path / "config.json").read_text())
  assert hf["architectures"] == [hf_lib.default_architecture(config)]
  assert hf["torch_dtype"] == config.param_dtype
  assert (tmp_path / hf_lib.INDEX_FILE).is_file()
  again = hf_lib.load_model(tmp_path)
  assert again.config == config

  def flat(m):
    return [np.asarray(v.get_value()) for _, v in nnx.to_flat_state(nnx.state(m))]

  for a, b in zip(flat(model), flat(again), strict=True):
    assert a.dtype == b.dtype == np.dtype(config.jnp_param_dtype)
    assert np.array_equal(a, b)
  if config.param_dtype == "bfloat16":  # upcast on load is exact
    wide = hf_lib.load_model(tmp_path, param_dtype="float32")
    assert wide.config.param_dtype == wide.config.dtype == "float32"
    for a, b in zip(flat(model), flat(wide), strict=True):
      assert b.dtype == np.float32 and np.array_equal(a.astype(np.float32), b)


def _edit_config(path, **changes):
  config = json.loads((path / "config.json").read_text())
  config.update(changes)
  (path / "config.json").write_text(json.dumps(config))


def _edit_tensors(path, edit):
  tensors = load_file(path / "model.safetensors")
  edit(tensors)
  save_file(tensors, path / "model.safetensors", metadata={"format": "pt"})


@pytest.mark.parametrize(
  "breakage, match",
  [
    (
      lambda p: _edit_config(p, architectures=["MistralForCausalLM"]),
      "unsupported architecture 'MistralForCausalLM'",
    ),
    (
      lambda p: _edit_tensors(p, lambda t: t.pop("model.layers.1.mlp.up_proj.weight")),
      r"missing tensors: model\.layers\.1\.mlp\.up_proj\.weight",
    ),
    (
      lambda p: _edit_tensors(
        p, lambda t: t.update({"model.layers.0.self_attn.extra.weight": np.zeros(3, np.float32)})
      ),
      r"unexpected tensors: model\.layers\.0\.self_attn\.extra\.weight",
    ),
    (
      lambda p: _edit_tensors(
        p,
        lambda t: t.update(
          {"model.layers.0.self_attn.k_proj.weight": np.zeros((8, 32), np.float32)}
        ),
      ),
      r"model\.layers\.0\.self_attn\.k_proj\.weight \(8, 32\) \(expected \(16, 32\)\)",
    ),
    (
      lambda p: _edit_config(p, rope_scaling={"rope_type": "dynamic", "factor": 2.0}),
      "unsupported rope type 'dynamic'",
    ),
    (lambda p: _edit_config(p, hidden_act="gelu"), "unsupported hidden_act 'gelu'"),
  ],
  ids=["architecture", "missing", "unexpected", "shape", "rope-type", "activation"],
)
def test_load_errors_name_the_problem(breakage, match, tmp_path):
  hf_lib.save_model(random_decoder(TINY, seed=5), tmp_path)
  hf_lib.load_model(tmp_path)  # intact: loads
  breakage(tmp_path)
  with pytest.raises(hf_lib.HFCheckpointError, match=match):
    hf_lib.load_model(tmp_path)


def test_nonzero_o_proj_bias_is_rejected(tmp_path):
  config = dataclasses.replace(TINY, attn_bias=True)
  hf_lib.save_model(random_decoder(config, seed=6), tmp_path, architecture="LlamaForCausalLM")
  hf_lib.load_model(tmp_path)  # zero o_proj biases are fine
  name = "model.layers.1.self_attn.o_proj.bias"
  _edit_tensors(tmp_path, lambda t: t.update({name: np.full(32, 0.5, np.float32)}))
  with pytest.raises(hf_lib.HFCheckpointError, match=rf"{name} is nonzero"):
    hf_lib.load_model(tmp_path)


# Published config.json files, abridged to the keys the import reads.
LLAMA32_1B = {
  "architectures": ["LlamaForCausalLM"],
  "attention_bias": False,
  "head_dim": 64,
  "hidden_act": "silu",
  "hidden_size": 2048,
  "intermediate_size": 8192,
  "max_position_embeddings": 131072,
  "mlp_bias": False,
  "model_type": "llama",
  "num_attention_heads": 32,
  "num_hidden_layers": 16,
  "num_key_value_heads": 8,
  "rms_norm_eps": 1e-05,
  "rope_scaling": {
    "factor": 32.0,
    "high_freq_factor": 4.0,
    "low_freq_factor": 1.0,
    "original_max_position_embeddings": 8192,
    "rope_type": "llama3",
  },
  "rope_theta": 500000.0,
  "tie_word_embeddings": True,
  "torch_dtype": "bfloat16",
  "vocab_size": 128256,
}
QWEN3_06B = {
  "architectures": ["Qwen3ForCausalLM"],
  "attention_bias": False,
  "head_dim": 128,
  "hidden_size": 1024,
  "intermediate_size": 3072,
  "max_position_embeddings": 40960,
  "max_window_layers": 28,
  "model_type": "qwen3",
  "num_attention_heads": 16,
  "num_hidden_layers": 28,
  "num_key_value_heads": 8,
  "rms_norm_eps": 1e-06,
  "rope_scaling": None,
  "rope_theta": 1000000,
  "sliding_window": None,
  "tie_word_embeddings": True,
  "torch_dtype": "bfloat16",
  "use_sliding_window": False,
  "vocab_size": 151936,
}
QWEN25_05B = {
  "architectures": ["Qwen2ForCausalLM"],
  "hidden_size": 896,
  "intermediate_size": 4864,
  "max_position_embeddings": 32768,
  "max_window_layers": 24,
  "model_type": "qwen2",
  "num_attention_heads": 14,
  "num_hidden_layers": 24,
  "num_key_value_heads": 2,
  "rms_norm_eps": 1e-06,
  "rope_theta": 1000000.0,
  "sliding_window": 32768,
  "tie_word_embeddings": True,
  "torch_dtype": "bfloat16",
  "use_sliding_window": False,
  "vocab_size": 151936,
}


@pytest.mark.parametrize(
  "hf, size",
  [(LLAMA32_1B, "llama3.2-1b"), (QWEN3_06B, "qwen3-0.6b"), (QWEN25_05B, "qwen2.5-0.5b")],
)
def test_published_configs_map_to_named_sizes(hf, size):
  config = hf_lib.config_from_hf(hf, param_dtype="float32")
  assert config == named_config(size, param_dtype="float32", dtype="float32")
  assert hf_lib.config_from_hf(hf).param_dtype == "bfloat16"  # the checkpoint's dtype
  back = hf_lib.config_to_hf(config)
  assert hf_lib.config_from_hf(back) == config
  assert back["architectures"] == hf["architectures"]


def test_rope_parameters_spelling():
  """transformers 5.x writes rope_parameters (theta inside) and dtype."""
  hf = {k: v for k, v in LLAMA32_1B.items() if k not in ("rope_scaling", "rope_theta")}
  hf["rope_parameters"] = {**LLAMA32_1B["rope_scaling"], "rope_theta": 500000.0}
  hf["dtype"] = hf.pop("torch_dtype")
  assert hf_lib.config_from_hf(hf) == hf_lib.config_from_hf(LLAMA32_1B)


def test_rope_scaling_is_hashable_and_validated():
  pairs = (("rope_type", "linear"), ("factor", 2.0))
  config = dataclasses.replace(TINY, rope_scaling=pairs)
  assert config.rope_scaling == RopeScaling("linear", factor=2.0)
  assert hash(config) == hash(dataclasses.replace(TINY, rope_scaling=dict(pairs)))
  with pytest.raises(ValueError, match="not supported"):
    RopeScaling("dynamic", factor=2.0)
  with pytest.raises(ValueError, match="original_max_position_embeddings"):
    RopeScaling("yarn", factor=2.0)
  with pytest.raises(ValueError, match="unknown rope_scaling fields"):
    dataclasses.replace(TINY, rope_scaling={"rope_type": "linear", "factor": 2.0, "alpha": 1})
