"""Off-policy distillation through the SFT recipe: a frozen teacher in the train step."""

import os

import numpy as np
import pytest
from tiny_configs import sft_tiny  # tests/recipes

from jaxpost import config_lib, metrics, models
from jaxpost.data import pipeline
from jaxpost.recipes import sft

pytestmark = pytest.mark.usefixtures("subprocess_env")


def _records(workdir):
  return metrics.read_jsonl_metrics(os.path.join(workdir, "metrics.jsonl"))


@pytest.fixture(scope="module")
def teacher_dir(tmp_path_factory):
  """A tiny SFT run (its tokenizer and 6 steps of training): the teacher."""
  workdir = str(tmp_path_factory.mktemp("teacher"))
  sft.run(sft_tiny(**{"train.steps": 6, "optim.lr": 5e-3}), workdir)
  return workdir


def _kd(**overrides):
  return sft_tiny(**{"loss.name": "kd", **overrides})


def test_a_student_started_at_its_teacher_has_zero_divergence(tmp_path, teacher_dir):
  """The train step reads frozen["teacher"]: a student that *is* the teacher (same
  parameters, its own copy) starts at divergence 0, and moves away from it only by the
  update's noise-free drift (it is at its minimum, so the gradient is ~0)."""
  c = _kd(**{"teacher.init_from": teacher_dir, "train.init_from": teacher_dir, "train.steps": 2})
  result = sft.run(c, str(tmp_path / "run"))
  first = [r for r in _records(str(tmp_path / "run")) if "train/divergence" in r][0]
  assert first["step"] == 1
  assert abs(first["train/divergence"]) < 1e-6
  assert first["train/grad_norm"] < 1e-4
  assert abs(result["train/divergence"]) < 1e-5


def test_a_fresh_student_learns_the_teachers_distribution(tmp_path, teacher_dir):
  """A student from scratch takes the teacher's tokenizer and lowers its divergence."""
  c = _kd(
    **{
      "teacher.init_from": teacher_dir,
      "train.steps": 12,
      "optim.lr": 5e-3,
      "optim.warmup_steps": 1,
      "loss.kd.divergence": "jsd",
    }
  )
  sft.run(c, str(tmp_path / "run"))
  div = [r["train/divergence"] for r in _records(str(tmp_path / "run")) if "train/divergence" in r]
  assert len(div) == 12 and all(np.isfinite(div))
  assert np.mean(div[-3:]) < 0.7 * np.mean(div[:3])


def test_fused_heads_train_like_materialised_logits(tmp_path, teacher_dir):
  """kernels.lm_head=fused reads both models as fused heads: the same run up to float
  summation order."""
  runs = {}
  for head in ("logits", "fused"):
    c = _kd(**{"teacher.init_from": teacher_dir, "train.steps": 3, "kernels.lm_head": head})
    runs[head] = sft.run(c, str(tmp_path / head))
  for key in ("train/loss", "train/divergence", "train/grad_norm"):
    np.testing.assert_allclose(runs["fused"][key], runs["logits"][key], rtol=2e-4, err_msg=key)


def test_a_kd_run_without_a_teacher_fails_before_any_work(tmp_path):
  with pytest.raises(config_lib.ConfigError, match="teacher.init_from"):
    sft.run(_kd(), str(tmp_path / "run"))
  assert not os.path.exists(tmp_path / "run" / "checkpoints")


def test_a_teacher_with_other_token_ids_is_refused(tmp_path, teacher_dir):
  """A student started from a run with another tokenizer cannot distill from this one."""
  other = str(tmp_path / "other")
  sft.run(sft_tiny(**{"tokenizer.vocab_size": 40, "train.steps": 1}), other)
  c = _kd(**{"teacher.init_from": teacher_dir, "train.init_from": other})
  with pytest.raises(config_lib.ConfigError, match="another tokenizer"):
    sft.run(c, str(tmp_path / "run"))


def test_a_teacher_of_another_size_and_padded_vocabulary(tmp_path, teacher_dir, random_decoder):
  """A wider, deeper Hugging Face teacher whose embedding is padded past the tokenizer's
  ids: refused with a hint until teacher.shared_vocab says which ids to compare."""
  from jaxpost.data.tokenizer import SentencePieceTokenizer
  from jaxpost.models import hf

  tok = SentencePieceTokenizer.load(os.path.join(teacher_dir, pipeline.TOKENIZER_PREFIX + ".model"))
  config = models.named_config(
    "tiny",
    vocab_size=tok.vocab_size + 16,
    d_model=48,
    n_layers=3,
    n_heads=4,
    n_kv_heads=2,
    head_dim=12,
    mlp_dim=96,
    max_seq_len=256,
  )
  hf_dir = str(tmp_path / "hf_teacher")
  hf.save_model(random_decoder(config, seed=3), hf_dir)
  tok_path = os.path.join(teacher_dir, pipeline.TOKENIZER_PREFIX + ".model")
  base = {"teacher.hf_dir": hf_dir, "tokenizer.path": tok_path}
  with pytest.raises(ValueError, match="shared_vocab"):
    sft.run(_kd(**base), str(tmp_path / "refused"))
  result = sft.run(
    _kd(**base, **{"teacher.shared_vocab": tok.vocab_size, "train.steps": 2}),
    str(tmp_path / "run"),
  )
  assert np.isfinite(result["train/divergence"]) and result["train/divergence"] > 0.01


def test_offline_teacher_shards_round_trip_and_train_like_the_live_teacher(tmp_path, teacher_dir):
  """Top-k shards written once: exactly the teacher's top k of each training batch, and a
  run on them equals a run with the live teacher at loss.kd.top_k = k."""
  import jax
  import safetensors.numpy

  from jaxpost import scoring
  from jaxpost.data import teacher_shards
  from jaxpost.losses.head import top_k_teacher
  from jaxpost.recipes import common
  from jaxpost.types import Batch

  base = {"teacher.init_from": teacher_dir, "train.steps": 3, "loss.kd.temperature": 2.0}
  shards = str(tmp_path / "shards")
  meta = teacher_shards.write(_kd(**base), shards, k=5, steps_per_shard=2)
  assert meta["k"] == 5 and meta["steps"] == 3
  assert sorted(os.listdir(shards)) == ["meta.json", "shard_0000001.safetensors",
                                        "shard_0000003.safetensors"]  # fmt: skip
  # Round trip: the stored arrays are the teacher's top k of each batch, bit for bit.
  c = _kd(**base)
  tok = common.load_tokenizer(c, str(tmp_path), teacher=True)
  graphdef, state = common.load_teacher(c, tok)
  scorer = scoring.make_scorer(graphdef)
  packer = teacher_shards.make_packer(c, tok)
  first = safetensors.numpy.load_file(os.path.join(shards, "shard_0000001.safetensors"))
  top_k = jax.jit(lambda state, batch: top_k_teacher(scorer.outputs(state, batch), 5, 2.0))
  reader = teacher_shards.Reader(shards)
  for i in range(2):
    arrays, _ = packer.next_batch()
    top = top_k(state, jax.tree.map(np.asarray, Batch(**arrays)))
    ids, logp = reader.step(i + 1, arrays["tokens"])
    np.testing.assert_array_equal(ids, first["ids"][i])
    np.testing.assert_array_equal(logp, first["logp"][i])
    np.testing.assert_array_equal(first["tokens"][i], arrays["tokens"])
    np.testing.assert_array_equal(first["ids"][i], np.asarray(top.ids))
    np.testing.assert_array_equal(first["logp"][i], np.asarray(top.logp))
  # Training on the shards == training against the live teacher's top 5.
  offline = sft.run(_kd(**base, **{"teacher.offline": shards}), str(tmp_path / "offline"))
  live = sft.run(_kd(**base, **{"loss.kd.top_k": 5}), str(tmp_path / "live"))
  for key in ("train/loss", "train/divergence", "train/grad_norm"):
    np.testing.assert_allclose(offline[key], live[key], rtol=1e-6, err_msg=key)


def test_offline_shards_for_another_run_are_refused(tmp_path, teacher_dir):
  from jaxpost.data import teacher_shards

  base = {"teacher.init_from": teacher_dir, "train.steps": 2}
  shards = str(tmp_path / "shards")
  teacher_shards.write(_kd(**base), shards, k=4)
  offline = {**base, "teacher.offline": shards}
  with pytest.raises(ValueError, match="other tokens"):  # another data order
    sft.run(_kd(**offline, seed=1), str(tmp_path / "seed1"))
  with pytest.raises(ValueError, match="covers 2 steps"):
    sft.run(_kd(**{**offline, "train.steps": 3}), str(tmp_path / "longer"))
  with pytest.raises(ValueError, match="k=4"):
    sft.run(_kd(**offline, **{"loss.kd.top_k": 8}), str(tmp_path / "k8"))
  with pytest.raises(ValueError, match="already holds"):
    teacher_shards.write(_kd(**base), shards, k=4)


def test_privileged_views_align_token_by_token_and_the_student_never_sees_the_text(tmp_path):
  from jaxpost.data import pipeline as data_pipeline
  from jaxpost.data import privileged, streams, template

  c = _kd(**{"teacher.privileged": "answer", "data.pack": False})
  tok = data_pipeline.prepare_tokenizer(c, str(tmp_path))
  student_source, _ = data_pipeline.build_source(c, tok)

  def packer(source, seq_len):
    return streams.StreamPacker(source, batch_size=8, seq_len=seq_len, pack=False)

  s_arrays, _ = packer(student_source, 64).next_batch()
  t_arrays, _ = packer(privileged.source(c, tok), 64 + 64).next_batch()
  cols = privileged.align(s_arrays, t_arrays)
  on = s_arrays["loss_mask"] > 0
  np.testing.assert_array_equal(
    np.take_along_axis(t_arrays["targets"], cols, 1)[on], s_arrays["targets"][on]
  )
  # The teacher's prompts are longer by the privileged text; the student's are the plain ones.
  for row in range(8):  # "Q: {q}\nA: {answer}\nA: {response}" vs "Q: {q}\nA: {response}"
    s_text = tok.decode([int(t) for t in s_arrays["tokens"][row] if t != tok.pad_id])
    t_text = tok.decode([int(t) for t in t_arrays["tokens"][row] if t != tok.pad_id])
    assert t_text.count("A:") == 2 and s_text.count("A:") == 1
  assert template.encode_prompt(tok, "12*34")  # the template is the SFT one
  # A shuffled teacher view is refused, not silently misaligned.
  with pytest.raises(ValueError, match="differs"):
    privileged.align(s_arrays, {k: v[::-1] for k, v in t_arrays.items()})


def test_the_student_as_its_own_teacher_with_no_privilege_has_zero_loss_and_gradient():
  """A PrivilegedBatch whose teacher view is the student's own rows: self-distillation
  against itself is exactly 0 (the live student is the teacher, under stop-gradient)."""
  import jax
  import jax.numpy as jnp

  from jaxpost import models, train
  from jaxpost.types import Batch, PrivilegedBatch

  model = models.create_model(models.named_config("tiny", vocab_size=40), 0)
  graphdef, params, rest = train.split_model(model)
  objective = train.objective_for("kd", graphdef, {"divergence": "jsd"})
  tokens = np.random.default_rng(0).integers(0, 40, (4, 16))
  batch = Batch.from_tokens(jnp.asarray(tokens, jnp.int32))
  cols = jnp.tile(jnp.arange(16, dtype=jnp.int32), (4, 1))
  pb = PrivilegedBatch(batch, batch, cols)
  from jaxpost.losses import compute_normalizers

  norm = compute_normalizers(batch.loss_mask, batch.segment_ids)
  (loss, _), grads = jax.value_and_grad(objective, has_aux=True)(params, {"rest": rest}, pb, norm)
  assert abs(float(loss)) < 1e-6
  assert max(float(jnp.abs(g).max()) for g in jax.tree.leaves(grads)) < 1e-6


def test_privileged_self_distillation_runs_end_to_end(tmp_path):
  c = _kd(
    **{
      "teacher.privileged": "trace",
      "data.pack": False,
      "train.steps": 3,
      "loss.kd.divergence": "rkl",
    }
  )
  result = sft.run(c, str(tmp_path / "run"))
  assert np.isfinite(result["train/loss"]) and result["train/divergence"] > 0
  with pytest.raises(config_lib.ConfigError, match="data.pack=False"):
    sft.run(_kd(**{"teacher.privileged": "trace"}), str(tmp_path / "packed"))


def test_ema_and_lagged_copies_of_the_student_as_teacher(tmp_path):
  """teacher.follow: the teacher starts as the student (divergence 0 at step 1, exactly),
  then trails it: the lagged copy catches up at each sync, so the divergence just after
  a sync is again ~0; the EMA copy never catches up. (A copy alone is a fixed point,
  zero gradient; the hard-label term moves the student.)"""
  mixed = {"loss.kd.hard_label_weight": 0.5, "optim.warmup_steps": 0}
  lagged = str(tmp_path / "lagged")
  sft.run(
    _kd(**{"teacher.follow": "lagged", "teacher.sync_every": 2, "train.steps": 4, **mixed}), lagged
  )
  div = {r["step"]: r["train/divergence"] for r in _records(lagged) if "train/divergence" in r}
  assert div[1] == pytest.approx(0.0, abs=1e-7) and div[3] == pytest.approx(0.0, abs=1e-7)
  assert div[2] > 1e-6 and div[4] > 1e-6  # one update behind
  ema = str(tmp_path / "ema")
  sft.run(
    _kd(**{"teacher.follow": "ema", "teacher.ema_decay": 0.5, "train.steps": 4, **mixed}), ema
  )
  div = {r["step"]: r["train/divergence"] for r in _records(ema) if "train/divergence" in r}
  assert div[1] == pytest.approx(0.0, abs=1e-7) and all(div[s] > 1e-6 for s in (2, 3, 4))
  with pytest.raises(config_lib.ConfigError, match="copy of the student"):
    sft.run(_kd(**{"teacher.follow": "ema", "teacher.init_from": lagged}), str(tmp_path / "x"))
  with pytest.raises(config_lib.ConfigError, match="distill losses only"):
    sft.run(sft_tiny(**{"teacher.follow": "ema"}), str(tmp_path / "y"))
