"""Per-answer features: padding invariance, a per-example NumPy reference, the token
layout of answers, and the shard round trip."""

import json

import jax
import numpy as np
import pytest

from jaxpost import models
from jaxpost.data import tasks, template
from jaxpost.data.tokenizer import SentencePieceTokenizer
from jaxpost.detection import features

RECORDS = [
  {"question": "357+468", "answer": "<think>7+8+0=15,5+6+1=12,3+4+1=08</think>825", "label": 1,
   "level": "add3"},
  {"question": "12*34", "answer": "408", "label": 0, "level": "mul2x2"},
  {"prompt": "841+573", "response": "<think>1+3+0=04</think>1414", "correct": True,
   "answer": "1414", "level": "add3"},
  {"question": "2+2", "answer": "<think>oops", "label": -1},  # malformed: plain text
]  # fmt: skip


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
  corpus = list(tasks.training_corpus(["add3", "mul2x2"], 300, seed=0))
  return SentencePieceTokenizer.train(
    corpus, tmp_path_factory.mktemp("tok") / "sp", vocab_size=64, byte_fallback=False
  )


@pytest.fixture(scope="module")
def model(tok, random_decoder):
  config = models.named_config(
    "tiny", vocab_size=tok.vocab_size, d_model=32, n_layers=3, n_heads=4, n_kv_heads=2,
    head_dim=8, mlp_dim=64,
  )  # fmt: skip
  return random_decoder(config, seed=1)


def _reference(model, tok, record, layers):
  """One example, no padding, in NumPy from the model's logits and hidden states."""
  q, a, _ = features._fields(record, 0)
  prompt, answer = features.encode_answer(tok, q, a)
  ids = np.asarray([prompt + answer], np.int32)
  out = model.forward(ids, hidden_layers=layers)
  logits = np.asarray(out.logits[0], np.float64)
  logp = logits - np.log(np.sum(np.exp(logits - logits.max(-1, keepdims=True)), -1,
                                keepdims=True)) - logits.max(-1, keepdims=True)  # fmt: skip
  s, e = len(prompt), len(prompt) + len(answer)
  rows = logp[s - 1 : e - 1]  # the distribution over each answer token
  lp = rows[np.arange(e - s), ids[0, s:e]]
  ent = -np.sum(np.exp(rows) * rows, -1)
  top = np.sort(np.exp(rows), -1)
  margin = top[:, -1] - top[:, -2]
  stats = []
  for x in (lp, ent, margin):
    stats += [x.mean(), x.min(), x.max(), x.std()]
  rel = np.arange(e - s) / max(e - s - 1, 1)
  slope = np.polyfit(rel, lp, 1)[0] if e - s > 1 else 0.0
  stats += [lp[0], lp[-1], slope, lp.sum(), e - s]
  ref = {"tokens": np.asarray(stats), "instability": _instability_reference(rows)}
  for layer, h in zip(layers, out.hidden_states, strict=True):
    h = np.asarray(h[0], np.float64)
    ref[f"last.L{layer}"] = h[e - 1]
    ref[f"mean.L{layer}"] = h[s:e].mean(0)
    ref[f"drift.L{layer}"] = h[s:e].mean(0) - h[:s].mean(0)
  return ref


def _instability_reference(rows, k=10, lam=1.0):
  """The card's signal by loops: top-k renormalised, H_t, JSD to the previous step."""
  p = []
  for r in np.exp(rows):
    keep = np.argsort(r)[-k:]
    q = np.zeros_like(r)
    q[keep] = r[keep] / r[keep].sum()
    p.append(q)

  def ent(x):
    return -sum(v * np.log(v) for v in x if v > 0)

  def kl(a, b):
    return sum(x * np.log(x / y) for x, y in zip(a, b, strict=True) if x > 0)

  h = np.array([ent(x) for x in p])

  def js(a, b):
    return 0.5 * kl(a, (a + b) / 2) + 0.5 * kl(b, (a + b) / 2)

  d = np.array([0.0] + [js(p[t], p[t - 1]) for t in range(1, len(p))])
  i = d + lam * h
  n = len(p)
  out = [i.max(), np.argmax(i) / max(n - 1, 1), i.mean()]
  out += [i[:w].max() for w in features.INSTABILITY_WINDOWS]
  out += [d[1:].sum() / max(n - 1, 1), d.max(), h.mean()]
  return np.asarray(out)


def test_batched_padded_features_equal_the_per_example_reference(model, tok):
  got = features.extract(model, tok, RECORDS, layers=(0, -1), batch_size=3)
  assert set(got) == {"tokens", "instability", "label", "index", "level"} | {
    f"{kind}.L{i}" for kind in ("last", "mean", "drift") for i in (0, 2)
  }
  assert got["tokens"].shape == (4, len(features.TOKEN_STATS))
  np.testing.assert_array_equal(got["label"], [1, 0, 1, -1])
  for i, record in enumerate(RECORDS):
    ref = _reference(model, tok, record, (0, 2))
    for name, value in ref.items():
      np.testing.assert_allclose(got[name][i], value, rtol=2e-4, atol=2e-5, err_msg=name)


def test_padding_and_batch_composition_do_not_change_features(model, tok):
  alone = [features.extract(model, tok, [r], layers=(1,)) for r in RECORDS]
  together = features.extract(model, tok, RECORDS, layers=(1,), batch_size=4, bucket=64)
  for i, single in enumerate(alone):  # equal up to f32 rounding of other matmul shapes
    for name in ("tokens", "last.L1", "mean.L1", "drift.L1"):
      np.testing.assert_allclose(together[name][i], single[name][0], rtol=1e-4, atol=1e-5)


def test_features_on_a_2x2x2_mesh_equal_one_device(model, tok):
  # Parameters placed by their logical axes (tensor-parallel heads and MLP, FSDP),
  # rows over data x fsdp: the same features as unsharded.
  if jax.device_count() < 8:
    pytest.skip("needs 8 (fake) devices")
  mesh = jax.make_mesh((2, 2, 2), ("data", "fsdp", "tensor"),
                       axis_types=(jax.sharding.AxisType.Auto,) * 3)  # fmt: skip
  plain = features.extract(model, tok, RECORDS, layers=(0, -1), batch_size=4)
  sharded = features.extract(model, tok, RECORDS, layers=(0, -1), batch_size=4, mesh=mesh)
  assert set(sharded) == set(plain)
  for name, value in plain.items():
    np.testing.assert_allclose(sharded[name], value, rtol=1e-4, atol=1e-5, err_msg=name)


def test_answers_are_encoded_like_the_templates_responses(tok):
  ex = template.Example("357+468", "7+8+0=15", "825")
  enc = template.encode_example(tok, ex, add_eos=False)
  prompt, answer = features.encode_answer(tok, ex.prompt, "<think>7+8+0=15</think>825")
  assert prompt + answer == enc.tokens.tolist() and len(prompt) == enc.prompt_len


def test_shards_round_trip_exactly(model, tok, tmp_path):
  got = features.extract(model, tok, RECORDS, layers=(-1,))
  levels = features.level_names(RECORDS)
  assert levels == ["add3", "mul2x2"]
  meta = {"model": "random", "levels": levels}
  paths = features.write(got, str(tmp_path / "f"), meta=meta, rows_per_shard=3)
  assert len(paths) == 2
  back, info = features.read(str(tmp_path / "f"))
  assert info["model"] == "random" and info["token_stats"] == list(features.TOKEN_STATS)
  for name, value in got.items():
    np.testing.assert_array_equal(back[name], value)
  # Level ids name the records' levels ("" for the record without one).
  assert features.answer_levels(back, info).tolist() == ["add3", "mul2x2", "add3", ""]
  with pytest.raises(ValueError, match="levels"):  # ids without their names: refused
    features.write(got, str(tmp_path / "g"), meta={"model": "random"})
  with pytest.raises(FileNotFoundError, match="features.json"):
    features.read(str(tmp_path))


def test_record_files_name_the_bad_line(tmp_path):
  path = tmp_path / "r.jsonl"
  path.write_text(json.dumps(RECORDS[0]) + "\n\n" + json.dumps(RECORDS[2]) + "\n")
  assert len(features.read_records(str(path))) == 2
  path.write_text(json.dumps(RECORDS[0]) + "\n" + json.dumps({"question": "x"}) + "\n")
  with pytest.raises(ValueError, match=":2: .*question/answer"):
    features.read_records(str(path))
  path.write_text('{"question": "x", "answer": "y", "label": 3}\n')
  with pytest.raises(ValueError, match=":1: .*label 3"):
    features.read_records(str(path))
  path.write_text("not json\n")
  with pytest.raises(ValueError, match=":1: not JSON"):
    features.read_records(str(path))


def test_features_are_jittable_on_a_padded_batch(model, tok):
  pairs = [features.encode_answer(tok, "1+1", "2"), features.encode_answer(tok, "12+34", "46")]
  arrays = features.pad_batch(pairs, 32, tok.pad_id)
  with pytest.raises(ValueError, match="do not fit"):
    features.pad_batch(pairs, 3, tok.pad_id)
  out = jax.jit(lambda b: features.answer_features(model, b, (0,)))(arrays)
  assert np.all(np.isfinite(out["tokens"]))
