"""GGUF import on files the tests write: small random Llama / Qwen2 / Qwen3 models.

Each model is made in ``transformers`` (every parameter random), written as GGUF the
way llama.cpp's converter lays it out (its tensor names, metadata keys and, for Llama,
its q/k row permutation) with the weights in a chosen type, then imported. Parity is
checked two ways: against ``transformers`` reading the same GGUF file (its own
dequantizer and un-permutation), and for f32 files against the original model (so the
writer below really is llama.cpp's layout, not one that merely agrees with ours).
The real SmolLM2 file is tested in ``test_smollm2.py``.
"""

from __future__ import annotations

import functools
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxpost.models import gguf as gguf_lib
from jaxpost.models import hf as hf_lib

gguf = pytest.importorskip("gguf", reason="GGUF import needs the gguf package")

VOCAB = 96
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
ARCHS = {  # GGUF architecture -> (HF architecture, extra config keys)
  "llama": ("LlamaForCausalLM", {}),
  "qwen2": ("Qwen2ForCausalLM", {}),
  "qwen3": ("Qwen3ForCausalLM", {"head_dim": 32}),
}
LOGIT_TOL = 2e-4  # max |logit difference| in f32 over a 2-layer model


def _interop():
  reason = "GGUF parity tests need torch and transformers: pip install -e '.[interop]'"
  return pytest.importorskip("torch", reason=reason), pytest.importorskip("transformers")


def _model(arch: str, seed: int = 0):
  """A transformers model with every parameter random (norms near 1), O(1) logits."""
  torch, transformers = _interop()
  hf_arch, extra = ARCHS[arch]
  config = transformers.AutoConfig.for_model(hf_lib.ARCHITECTURES[hf_arch], **SMALL, **extra)
  config.architectures = [hf_arch]
  torch.manual_seed(seed)
  model = transformers.AutoModelForCausalLM.from_config(
    config, attn_implementation="eager", dtype=torch.float32
  )
  with torch.no_grad():
    for name, p in model.named_parameters():
      noise = torch.randn(p.shape, dtype=torch.float32)
      p.copy_(1.0 + 0.2 * noise if "norm" in name else (0.5 if "embed" in name else 0.2) * noise)
  return model.eval()


@functools.partial(jax.jit, static_argnames="graphdef")
def _logits(graphdef, state, tokens, segment_ids):
  return nnx.merge(graphdef, state)(tokens, segment_ids=segment_ids)


def our_logits(model, tokens, mask):
  graphdef, state = nnx.split(model)
  return np.asarray(_logits(graphdef, state, jnp.asarray(tokens), jnp.asarray(mask)))


def hf_logits(hf_model, tokens, mask):
  torch, _ = _interop()
  with torch.no_grad():
    out = hf_model(input_ids=torch.tensor(tokens), attention_mask=torch.tensor(mask))
  return out.logits.float().numpy()


def right_padded_batch(seed: int = 0):
  """i64[3, 12] tokens (0 after each row's end) and their {0,1} mask."""
  rng = np.random.default_rng(seed)
  tokens = np.zeros((3, 12), np.int64)
  mask = np.zeros((3, 12), np.int64)
  for row, n in enumerate([12, 7, 3]):
    tokens[row, :n] = rng.integers(1, VOCAB, n)
    mask[row, :n] = 1
  return tokens, mask


_LAYER = {h: g for g, h in gguf_lib._LAYER_TENSORS.items()}
_GLOBAL = {h: g for g, h in gguf_lib._GLOBAL_TENSORS.items()}


def _gguf_name(hf_name: str) -> str:
  if hf_name in _GLOBAL:
    return _GLOBAL[hf_name]
  _, _, i, rest = hf_name.split(".", 3)
  return f"blk.{i}.{_LAYER[rest]}"


def _permute(w: np.ndarray, n_heads: int) -> np.ndarray:
  """llama.cpp's converter: each head's rows [2, E/2] -> [E/2, 2] (adjacent RoPE pairs)."""
  return (
    w.reshape(n_heads, 2, w.shape[0] // n_heads // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)
  )


def write_gguf(path, hf_model, gguf_arch: str, qtype: str = "F32", *, extra=None, drop=()):
  """Writes ``hf_model`` as a llama.cpp-style GGUF file; 2-D weights in ``qtype``."""
  c = hf_model.config
  w = gguf.GGUFWriter(str(path), gguf_arch)
  a = gguf_arch
  w.add_uint32(f"{a}.block_count", c.num_hidden_layers)
  w.add_uint32(f"{a}.context_length", c.max_position_embeddings)
  w.add_uint32(f"{a}.embedding_length", c.hidden_size)
  w.add_uint32(f"{a}.feed_forward_length", c.intermediate_size)
  w.add_uint32(f"{a}.attention.head_count", c.num_attention_heads)
  w.add_uint32(f"{a}.attention.head_count_kv", c.num_key_value_heads)
  w.add_float32(f"{a}.rope.freq_base", float(c.rope_parameters["rope_theta"]))
  w.add_float32(f"{a}.attention.layer_norm_rms_epsilon", c.rms_norm_eps)
  w.add_uint32(f"{a}.vocab_size", c.vocab_size)
  head_dim = getattr(c, "head_dim", None) or c.hidden_size // c.num_attention_heads
  w.add_uint32(f"{a}.attention.key_length", head_dim)
  w.add_uint32(f"{a}.attention.value_length", head_dim)
  w.add_uint32(f"{a}.rope.dimension_count", head_dim)
  for key, value in (extra or {}).items():
    if isinstance(value, str):
      w.add_string(key, value)
    elif isinstance(value, float):
      w.add_float32(key, value)
    else:
      w.add_uint32(key, value)
  for name, p in hf_model.state_dict().items():
    if name in drop or (name == "lm_head.weight" and c.tie_word_embeddings):
      continue
    t = p.detach().float().numpy()
    if gguf_arch == "llama" and name.endswith(("q_proj.weight", "k_proj.weight")):
      heads = c.num_attention_heads if "q_proj" in name else c.num_key_value_heads
      t = _permute(t, heads)
    if t.ndim == 2 and qtype != "F32":
      q = gguf.GGMLQuantizationType[qtype]
      w.add_tensor(_gguf_name(name), gguf.quants.quantize(t, q), raw_dtype=q)
    else:
      w.add_tensor(_gguf_name(name), np.ascontiguousarray(t))
  w.write_header_to_file()
  w.write_kv_data_to_file()
  w.write_tensors_to_file()
  w.close()
  return path


def _transformers_from_gguf(path):
  import torch
  import transformers

  return transformers.AutoModelForCausalLM.from_pretrained(
    path.parent, gguf_file=path.name, attn_implementation="eager", dtype=torch.float32
  ).eval()


@pytest.fixture(scope="module", params=sorted(ARCHS))
def arch(request):
  return request.param


def _as_stored(hf_model, qtype: str):
  """``hf_model`` with each 2-D weight replaced by what a ``qtype`` file holds (the gguf
  package's own quantizer and dequantizer): the model a perfect import reproduces."""
  import copy

  torch, _ = _interop()
  model = copy.deepcopy(hf_model)
  if qtype == "F32":
    return model
  q = gguf.GGMLQuantizationType[qtype]
  with torch.no_grad():
    for _, p in model.named_parameters():
      if p.ndim == 2:
        w = p.numpy()
        stored = gguf.quants.dequantize(gguf.quants.quantize(w, q), q).reshape(w.shape)
        p.copy_(torch.from_numpy(stored.astype(np.float32)))
  return model


@pytest.mark.parametrize("qtype", ["F32", "F16", "BF16", "Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1"])
def test_logits_match_the_stored_model(arch, qtype, tmp_path):
  hf_model = _model(arch, seed=1)
  path = write_gguf(tmp_path / f"{arch}.gguf", hf_model, arch, qtype)
  ours = gguf_lib.load_model(path)
  tokens, mask = right_padded_batch()
  real = mask.astype(bool)
  got = our_logits(ours, tokens, mask)
  want = hf_logits(_as_stored(hf_model, qtype), tokens, mask)
  assert want[real].std() > 0.5
  assert np.abs(got[real] - want[real]).max() <= LOGIT_TOL, qtype
  if qtype not in ("F32", "F16"):
    # Quantization really happened (the tolerance above is not vacuous for it).
    orig = hf_logits(hf_model, tokens, mask)
    assert np.abs(got[real] - orig[real]).max() > 10 * LOGIT_TOL


@pytest.mark.parametrize("qtype", ["F32", "Q4_1"])
def test_logits_match_transformers_reading_the_same_file(arch, qtype, tmp_path):
  """transformers' own GGUF reader (its dequantizer and q/k un-permutation) agrees."""
  if arch == "qwen3":
    pytest.skip("transformers' GGUF reader ignores qwen3.attention.key_length (head_dim)")
  hf_model = _model(arch, seed=1)
  path = write_gguf(tmp_path / f"{arch}.gguf", hf_model, arch, qtype)
  tokens, mask = right_padded_batch()
  real = mask.astype(bool)
  got = our_logits(gguf_lib.load_model(path), tokens, mask)
  want = hf_logits(_transformers_from_gguf(path), tokens, mask)
  assert np.abs(got[real] - want[real]).max() <= LOGIT_TOL


def test_imported_config(arch, tmp_path):
  hf_model = _model(arch)
  model = gguf_lib.load_model(write_gguf(tmp_path / "m.gguf", hf_model, arch, "Q8_0"))
  c = model.config
  assert (c.vocab_size, c.d_model, c.n_layers, c.n_heads, c.n_kv_heads) == (VOCAB, 64, 2, 4, 2)
  assert c.head_dim == (32 if arch == "qwen3" else 16)
  assert c.qk_norm == (arch == "qwen3") and c.attn_bias == (arch == "qwen2")
  assert c.tie_embeddings == hf_model.config.tie_word_embeddings
  assert c.max_seq_len == 128 and c.norm_eps == pytest.approx(1e-5)
  assert c.param_dtype == "float32"


def test_llama_rows_are_unpermuted(tmp_path):
  """Without undoing the permutation the logits move far past the tolerance."""
  hf_model = _model("llama", seed=2)
  path = write_gguf(tmp_path / "m.gguf", hf_model, "llama")
  ours = gguf_lib.load_model(path)
  q = hf_model.model.layers[0].self_attn.q_proj.weight.detach().numpy()  # [H*E, D]
  kernel = np.asarray(ours.layers[0].attn.q_proj.kernel.get_value())  # [D, H, E]
  np.testing.assert_array_equal(kernel.reshape(64, -1).T, q)


def test_export_of_an_import_is_an_hf_checkpoint(tmp_path):
  import torch
  import transformers

  hf_model = _model("llama", seed=3)
  model = gguf_lib.load_model(write_gguf(tmp_path / "m.gguf", hf_model, "llama", "Q4_1"))
  hf_lib.save_model(model, tmp_path / "hf")
  back = transformers.AutoModelForCausalLM.from_pretrained(
    tmp_path / "hf", attn_implementation="eager", dtype=torch.float32
  ).eval()
  tokens, mask = right_padded_batch(seed=4)
  real = mask.astype(bool)
  assert (
    np.abs(hf_logits(back, tokens, mask)[real] - our_logits(model, tokens, mask)[real]).max()
    <= LOGIT_TOL
  )


def test_bf16_params(tmp_path):
  hf_model = _model("qwen2", seed=5)
  path = write_gguf(tmp_path / "m.gguf", hf_model, "qwen2", "Q8_0")
  f32 = gguf_lib.load_model(path)
  bf16 = gguf_lib.load_model(path, param_dtype="bfloat16")
  assert bf16.config.param_dtype == "bfloat16" and bf16.config.dtype == "bfloat16"
  leaves = jax_leaves(bf16)
  assert all(x.dtype == np.dtype("bfloat16") for x in leaves)
  tokens, mask = right_padded_batch(seed=6)
  real = mask.astype(bool)
  a, b = our_logits(f32, tokens, mask), our_logits(bf16, tokens, mask)
  # bf16 keeps 8 bits of mantissa: logits of O(1-10) agree to a few tenths.
  assert np.abs(a[real] - b[real]).max() < 0.25 * max(1.0, np.abs(a[real]).max() / 10)


def jax_leaves(model):
  return [np.asarray(v.get_value()) for _, v in nnx.to_flat_state(nnx.state(model, nnx.Param))]


# ----------------------------------------------------------------------------- errors


def _errors_case(tmp_path, **kw):
  return write_gguf(tmp_path / "bad.gguf", _model("llama"), "llama", **kw)


def test_unsupported_architecture_is_named(tmp_path):
  path = write_gguf(tmp_path / "bad.gguf", _model("llama"), "gemma")
  with pytest.raises(gguf_lib.GGUFError, match="unsupported architecture 'gemma'"):
    gguf_lib.load_model(path)


def test_missing_tensor_is_named(tmp_path):
  path = _errors_case(tmp_path, drop=("model.layers.1.mlp.up_proj.weight",))
  with pytest.raises(gguf_lib.GGUFError, match=r"missing tensors: blk\.1\.ffn_up\.weight"):
    gguf_lib.load_model(path)


def test_partial_rope_is_refused(tmp_path):
  path = _errors_case(tmp_path, extra={"llama.rope.dimension_count": 8})
  # A later duplicate key would be ambiguous; the writer refuses it, so write fresh.
  with pytest.raises(gguf_lib.GGUFError, match="partial RoPE"):
    gguf_lib.load_model(path)


def test_unsupported_tensor_type_is_named(tmp_path):
  hf_model = _model("llama")
  path = tmp_path / "bad.gguf"
  write_gguf(path, hf_model, "llama")
  # Rewrite one tensor as a type we do not read (IQ4_NL: same block size as Q4_0).
  f = gguf.GGUFReader(str(path))
  w = gguf.GGUFWriter(str(tmp_path / "iq.gguf"), "llama")
  for key, field in f.fields.items():
    if key.startswith("llama."):
      value = field.contents()
      (w.add_float32 if isinstance(value, float) else w.add_uint32)(key, value)
  for t in f.tensors:
    data = np.asarray(t.data)
    if t.name == "blk.0.ffn_gate.weight":
      q = gguf.GGMLQuantizationType.IQ4_NL
      raw = np.zeros((data.shape[0], data.shape[1] // 32 * 18), np.uint8)
      w.add_tensor(t.name, raw, raw_dtype=q)
    else:
      w.add_tensor(t.name, np.ascontiguousarray(data))
  w.write_header_to_file()
  w.write_kv_data_to_file()
  w.write_tensors_to_file()
  w.close()
  with pytest.raises(gguf_lib.GGUFError, match=r"blk\.0\.ffn_gate\.weight.*IQ4_NL"):
    gguf_lib.load_model(tmp_path / "iq.gguf")


def test_not_a_gguf_file(tmp_path):
  path = tmp_path / "x.gguf"
  path.write_bytes(b"not a gguf file at all")
  with pytest.raises(gguf_lib.GGUFError, match="cannot read"):
    gguf_lib.load_model(path)


def test_packaged_names_and_missing_files():
  with pytest.raises(KeyError, match="no packaged GGUF model 'nope'"):
    gguf_lib.find_packaged("nope")
  with pytest.raises(FileNotFoundError, match="no GGUF file"):
    gguf_lib.resolve("/nonexistent/model.gguf")


# ----------------------------------------------------------------------------- tokenizer

_TEXTS = (
  "Hello world, 12345 and  two  spaces",
  "line\n\nbreaks\r\n\ttab; ünïcödé 日本 🤖",
  "don't STOP 1,000.5 x86_64",
  "<|im_start|>user\nhi<|im_end|>",
)


def _byte_level_bpe():
  import tokenizers
  from tokenizers import decoders, models, pre_tokenizers, trainers

  tok = tokenizers.Tokenizer(models.BPE())
  tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
  tok.decoder = decoders.ByteLevel()
  trainer = trainers.BpeTrainer(
    vocab_size=600,
    special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
    initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    show_progress=False,
  )
  tok.train_from_iterator([t * 3 for t in _TEXTS] * 10, trainer)
  return tok


def _write_tokenizer_gguf(path, tok, pre: str, model: str = "gpt2", template: str = ""):
  """A Llama GGUF file (tiny random weights) carrying ``tok`` as llama.cpp stores it."""
  vocab = tok.get_vocab()
  tokens = [t for t, _ in sorted(vocab.items(), key=lambda kv: kv[1])]
  state = json.loads(tok.to_str())
  merges = [m if isinstance(m, str) else " ".join(m) for m in state["model"]["merges"]]
  specials = {a["content"] for a in state["added_tokens"]}
  w = gguf.GGUFWriter(str(path), "llama")
  w.add_string("tokenizer.ggml.model", model)
  w.add_string("tokenizer.ggml.pre", pre)
  w.add_array("tokenizer.ggml.tokens", tokens)
  w.add_array("tokenizer.ggml.merges", merges)
  w.add_array("tokenizer.ggml.token_type", [3 if t in specials else 1 for t in tokens])
  w.add_uint32("tokenizer.ggml.bos_token_id", 1)
  w.add_uint32("tokenizer.ggml.eos_token_id", 2)
  w.add_bool("tokenizer.ggml.add_bos_token", True)
  if template:
    w.add_string("tokenizer.chat_template", template)
  w.add_tensor("token_embd.weight", np.zeros((len(tokens), 32), np.float32))
  w.write_header_to_file()
  w.write_kv_data_to_file()
  w.write_tensors_to_file()
  w.close()
  return path


def test_gguf_tokenizer_equals_the_tokenizer_it_was_written_from(tmp_path):
  tok = _byte_level_bpe()
  path = _write_tokenizer_gguf(tmp_path / "t.gguf", tok, "gpt2", template="{{ messages }}")
  ours = gguf_lib.load_tokenizer(path)
  assert ours.vocab_size == tok.get_vocab_size()
  assert (ours.bos_id, ours.eos_id, ours.pad_id, ours.add_bos) == (1, 2, 2, True)
  assert ours.chat_template == "{{ messages }}"
  for text in _TEXTS:
    assert ours.encode(text) == tok.encode(text, add_special_tokens=False).ids, text
    assert ours.decode(ours.encode(text)) == text
  _, transformers = _interop()
  ref = transformers.AutoTokenizer.from_pretrained(tmp_path, gguf_file="t.gguf")
  for text in _TEXTS:
    assert ours.encode(text) == ref.encode(text, add_special_tokens=False), text


@pytest.mark.parametrize(
  "pre, text, pieces",
  [
    # smollm isolates every digit before the GPT-2 split.
    ("smollm", "a 123", ["a", "Ġ", "1", "2", "3"]),
    ("gpt2", "a 123", ["a", "Ġ123"]),
    # Llama 3 groups up to three digits; Qwen2 one.
    ("llama-bpe", "12345", ["123", "45"]),
    ("qwen2", "12345", ["1", "2", "3", "4", "5"]),
  ],
)
def test_pre_tokenizers_split_digits_like_their_models(pre, text, pieces):
  from jaxpost.data.gguf_tokenizer import _pre_tokenizer

  split = [p for p, _ in _pre_tokenizer(pre, "x").pre_tokenize_str(text)]
  assert split == pieces


def test_tokenizer_errors_name_the_problem(tmp_path):
  tok = _byte_level_bpe()
  path = _write_tokenizer_gguf(tmp_path / "a.gguf", tok, "mystery-pre")
  with pytest.raises(gguf_lib.GGUFError, match="unsupported pre-tokenizer 'mystery-pre'"):
    gguf_lib.load_tokenizer(path)
  path = _write_tokenizer_gguf(tmp_path / "b.gguf", tok, "gpt2", model="llama")
  with pytest.raises(gguf_lib.GGUFError, match="unsupported tokenizer model 'llama'"):
    gguf_lib.load_tokenizer(path)
