"""T3S token selection: the card's toy case, bottleneck choice, masks over training batches."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from tiny_configs import sft_tiny  # tests/recipes

from jaxpost import metrics
from jaxpost.data import token_selection
from jaxpost.losses import LOSSES, compute_normalizers
from jaxpost.recipes import sft
from jaxpost.types import Batch

pytestmark = pytest.mark.usefixtures("subprocess_env")


def test_the_cards_toy_case_drops_the_anchor_and_gives_it_exactly_zero_gradient():
  """c(theta_0) = [-1, -2, -3], c(theta_b) = [-0.5, -2.5, -3]: A = {0}; the masked loss is
  the mean over t in {1, 2} and the gradient at t = 0 is exactly 0."""
  keep = token_selection.anchor_keep(
    jnp.asarray([[-1.0, -2.0, -3.0]]), jnp.asarray([[-0.5, -2.5, -3.0]]), jnp.ones((1, 3))
  )
  np.testing.assert_array_equal(np.asarray(keep), [[0.0, 1.0, 1.0]])
  batch = Batch.from_tokens(jnp.asarray([[1, 2, 3, 4]], jnp.int32))
  keep4 = jnp.pad(keep, ((0, 0), (0, 1)))  # the last token has no target
  batch = batch.replace(loss_mask=jnp.asarray([[1.0, 1.0, 1.0, 0.0]]) * keep4)
  z = jnp.asarray(np.random.default_rng(0).normal(size=(1, 4, 6)), jnp.float32)
  ce = LOSSES.bind("cross_entropy", {})
  norm = compute_normalizers(batch.loss_mask, batch.segment_ids)
  loss, grad = jax.value_and_grad(lambda x: ce(x, batch, norm=norm)[0])(z)
  logp = np.asarray(jax.nn.log_softmax(z))
  want = -(logp[0, 1, 3] + logp[0, 2, 4]) / 2
  np.testing.assert_allclose(float(loss), want, rtol=1e-6)
  assert float(jnp.abs(grad[0, 0]).max()) == 0.0 and float(jnp.abs(grad[0, 1]).max()) > 0


def test_masks_of_every_batch_come_from_the_two_checkpoints_and_restrict_the_loss(tmp_path):
  start = str(tmp_path / "start")  # theta_0: the student the T3S run restarts from
  sft.run(sft_tiny(**{"train.steps": 1}), start)
  run = str(tmp_path / "trajectory")  # the first SFT run from theta_0, checkpoints kept
  sft.run(
    sft_tiny(**{"train.init_from": start, "train.steps": 6, "train.checkpoint_every": 2,
                "train.keep_checkpoints": 10, "eval.every": 2, "optim.lr": 5e-3}),
    run,
  )  # fmt: skip
  step_b = token_selection.bottleneck_step(run)
  records = metrics.read_jsonl_metrics(os.path.join(run, "metrics.jsonl"))
  acc = {r["step"]: r["eval/accuracy"] for r in records if "eval/accuracy" in r}
  assert acc[step_b] == min(acc[s] for s in acc if s in (2, 4, 6))
  out = str(tmp_path / "masks")
  c = sft_tiny(**{"tokenizer.path": start, "train.steps": 3})
  meta = token_selection.write(c, out, start=start, bottleneck=f"{run}@2", steps_per_shard=2)
  assert meta["bottleneck_step"] == 2
  reader = token_selection.Reader(out)
  from jaxpost.data import step_shards
  from jaxpost.recipes import common

  tok = common.load_tokenizer(c, out)
  packer = step_shards.make_packer(c, tok)
  arrays, _ = packer.next_batch()
  keep = reader.keep(1, arrays["tokens"])
  on = arrays["loss_mask"] > 0
  assert 0 < keep[on].sum() < on.sum()  # some anchors dropped, not all tokens
  assert np.all(keep[~on] == 0)
  restart = {"train.steps": 3, "train.init_from": start}
  result = sft.run(sft_tiny(**restart, **{"data.token_selection": out}), str(tmp_path / "t3s"))
  full = sft.run(sft_tiny(**restart), str(tmp_path / "sft"))
  assert result["train/tokens"] < full["train/tokens"]  # fewer counted tokens per batch


def test_online_bottleneck_is_the_lowest_point_of_a_dip_that_recovers():
  b = token_selection.Bottleneck(margin=0.02)
  trajectory = zip((10, 20, 30, 40, 50), (0.5, 0.4, 0.3, 0.31, 0.33), strict=True)
  events = [b.observe(s, a) for s, a in trajectory]
  assert events == ["low", "low", "low", "", "found"] and b.found_step == 30
  assert b.observe(60, 0.1) == "" and b.found_step == 30  # found once
  rising = token_selection.Bottleneck(margin=0.02)
  assert [rising.observe(s, a) for s, a in enumerate((0.1, 0.2, 0.3, 0.5))] == ["low", "", "", ""]
  shallow = token_selection.Bottleneck(margin=0.1)  # fell 0.05 < margin: no bottleneck
  assert "found" not in [shallow.observe(s, a) for s, a in enumerate((0.5, 0.45, 0.7))]


def _online(steps, **over):
  return sft_tiny(
    **{
      "data.token_selection": token_selection.ONLINE,
      "eval.every": 1,
      "eval.levels": "mul2x2",
      "train.steps": steps,
      "train.checkpoint_every": 2,
      **over,
    }
  )


def _scripted(monkeypatch, found_after: int):
  """The detector sees a dip at step 2 and the recovery at ``found_after``."""

  def observe(self, step, accuracy):
    if step == 2:
      self.low_step = 2
      return "low"
    if step == found_after and self.found_step < 0:
      self.found_step = 2
      return "found"
    return ""

  monkeypatch.setattr(token_selection.Bottleneck, "observe", observe)


def _tokens(workdir):
  records = metrics.read_jsonl_metrics(os.path.join(workdir, "metrics.jsonl"))
  return {r["step"]: r["train/tokens"] for r in records if "train/tokens" in r}


def test_online_switches_to_masked_training_after_the_bottleneck_and_resumes(tmp_path, monkeypatch):
  plain = str(tmp_path / "plain")
  sft.run(sft_tiny(**{"train.steps": 6, "eval.every": 1, "eval.levels": "mul2x2"}), plain)
  _scripted(monkeypatch, found_after=3)
  full = str(tmp_path / "full")
  sft.run(_online(6), full)
  a, b = _tokens(plain), _tokens(full)
  assert all(a[s] == b[s] for s in (1, 2, 3))  # before the switch: every token
  assert all(b[s] < a[s] for s in (4, 5, 6))  # after: the anchors are out
  assert os.path.isdir(os.path.join(full, "t3s", "checkpoints", "2"))  # theta_b kept
  # Interrupted at step 4 (after the switch) and resumed: the same masks and losses.
  part = str(tmp_path / "part")
  sft.run(_online(6, **{"train.stop_after": 4}), part)
  sft.run(_online(6), part)
  c = _tokens(part)
  assert all(c[s] == b[s] for s in (5, 6))
  with pytest.raises(Exception, match="eval.every"):
    sft.run(_online(2, **{"eval.every": 0}), str(tmp_path / "bad"))
