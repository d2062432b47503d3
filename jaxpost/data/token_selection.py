"""T3S token selection (arXiv 2601.10348): drop "imitation-anchor" tokens from SFT.

Distilling into a strong student, T3S observes an imitation bottleneck: training
accuracy falls to a minimum (theta_b) before it recovers, while some tokens' confidence
rises early (anchors: mostly connectives, punctuation, format) and the rest is
suppressed. With c_t(theta) = log p_theta(y_t | y_<t, x):

  delta_t = c_t(theta_b) - c_t(theta_0),   anchors A = {t : delta_t > 0},
  restart from theta_0 with the loss on the tokens t not in A only.

``anchor_keep`` is that rule (the card's toy case is a test); ``bottleneck_step`` picks
theta_b as the checkpoint of lowest logged accuracy of a run; ``write`` computes the keep
mask of every training batch once, from the two frozen models (``step_shards``), and
``data.token_selection=DIR`` multiplies each batch's loss mask by it. The normalisation
of the masked loss is not in the card: here the kept tokens are the loss mask, so a
token mean averages over kept tokens (a sequence mean over sequences with any kept).

  python -m jaxpost.data.token_selection --config=configs/sft.py:tiny --out=runs/t3s \\
      --start=RUN_OR_ZOO --bottleneck=RUN_DIR[@STEP]

Online (``data.token_selection=online``, the card's variant: "track train accuracy,
switch to masked mode when the bottleneck is detected"): ``Online`` watches the
evaluation accuracy (held-out problems: our verifier's signal; the card says train
accuracy); once it has fallen ``data.t3s_margin`` below its first value and then
recovered ``data.t3s_margin`` above its lowest, the lowest point is the bottleneck, and
from the next step on every batch's anchors (``anchor_keep`` of the run's start and the
parameters kept at that lowest evaluation) leave the loss. The run continues from where
it is (the offline variant restarts from theta_0). The detection rule and its margin are
not in the card. A run that never dips never switches: it is plain SFT.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os

import jax
import jax.numpy as jnp
import numpy as np

from jaxpost.data import step_shards

FIELD = "data.token_selection"
ONLINE = "online"  # the value of FIELD that selects the online variant


def anchor_keep(logp_start: jax.Array, logp_bottleneck: jax.Array, mask: jax.Array) -> jax.Array:
  """f32 keep mask: 1 on counted tokens whose confidence did not rise (delta <= 0)."""
  delta = logp_bottleneck - logp_start
  return jnp.where(delta > 0, 0.0, 1.0) * (mask > 0)


def bottleneck_step(run_dir: str, metric: str = "eval/accuracy") -> int:
  """The logged step of lowest ``metric`` in ``run_dir``'s metrics.jsonl (the first on
  ties) among those with a kept checkpoint: theta_b.

  Raises:
    ValueError: no step has both the metric and a checkpoint.
  """
  from jaxpost import checkpoint, metrics

  records = metrics.read_jsonl_metrics(os.path.join(run_dir, "metrics.jsonl"))
  saved = set(checkpoint.Checkpointer(os.path.join(run_dir, "checkpoints")).all_steps())
  scored = [(r[metric], r["step"]) for r in records if metric in r and r["step"] in saved]
  if not scored:
    raise ValueError(f"{run_dir!r}: no checkpointed step logs {metric!r} (keep more checkpoints)")
  return min(scored)[1]


def _params_at(run_dir: str, step: int | None, config, vocab_size: int):
  """(graphdef, (params, rest)) of ``run_dir`` at ``step`` (None: its latest)."""
  from jaxpost import checkpoint, train
  from jaxpost.recipes import common

  graphdef, params, rest = train.split_model(common.build_model(config, vocab_size, init_from=""))
  loaded, _ = checkpoint.load_params(run_dir, params, what="t3s", step=step)
  return graphdef, (loaded, rest)


def write(config, out: str, *, start: str, bottleneck: str, steps_per_shard: int = 100) -> dict:
  """The T3S keep mask of every training batch of ``config``.

  Args:
    config: the restarted SFT run's config (its data, tokenizer, batches).
    out: shard directory.
    start: theta_0, a run or ``zoo:NAME`` (its latest parameters).
    bottleneck: theta_b, ``RUN_DIR@STEP`` or ``RUN_DIR`` (``bottleneck_step`` picks it).
  """
  from jaxpost import scoring, zoo
  from jaxpost.recipes import common

  tok = common.load_tokenizer(config, out)
  run_b, _, step = bottleneck.partition("@")
  run_b = zoo.resolve(run_b)
  step_b = int(step) if step else bottleneck_step(run_b)
  g0, s0 = _params_at(zoo.resolve(start), None, config, tok.vocab_size)
  gb, sb = _params_at(run_b, step_b, config, tok.vocab_size)
  score0, scoreb = scoring.make_scorer(g0), scoring.make_scorer(gb)

  @jax.jit
  def keep(s0, sb, batch):
    return anchor_keep(score0.logp(s0, batch)[0], scoreb.logp(sb, batch)[0], batch.loss_mask)

  def compute(batch):
    return {"keep": np.asarray(keep(s0, sb, jax.tree.map(np.asarray, batch)), np.float32)}

  meta = {"start": start, "bottleneck": run_b, "bottleneck_step": step_b}
  return step_shards.write(
    config, tok, out, compute, meta, steps_per_shard=steps_per_shard, desc="t3s masks"
  )


class Reader(step_shards.Reader):
  """Offline T3S as a batch view: ``reader(step, batch)`` drops the step's anchors."""

  def __init__(self, directory: str):
    super().__init__(directory, FIELD)

  def keep(self, step: int, tokens: np.ndarray) -> np.ndarray:
    return self.step(step, tokens)["keep"]

  def __call__(self, step: int, batch):
    return batch.replace(loss_mask=batch.loss_mask * self.keep(step, batch.tokens))


@dataclasses.dataclass
class Bottleneck:
  """Finds the imitation bottleneck in an accuracy trajectory, one evaluation at a time.

  Attributes:
    margin: accuracy a dip must fall below the first evaluation, and the recovery rise
      above the lowest, for the lowest to count as the bottleneck.
    first, low, low_step: the first accuracy, the lowest so far and its step.
    found_step: the bottleneck's step once found (-1 before).
  """

  margin: float = 0.02
  first: float | None = None
  low: float | None = None
  low_step: int = -1
  found_step: int = -1

  def observe(self, step: int, accuracy: float) -> str:
    """ "low" (a new lowest: keep this step's parameters), "found" (``found_step`` is
    the bottleneck) or "" (nothing to do)."""
    if self.found_step >= 0:
      return ""
    if self.first is None or accuracy < self.low:
      self.first = accuracy if self.first is None else self.first
      self.low, self.low_step = accuracy, step
      return "low"
    if self.low <= self.first - self.margin and accuracy >= self.low + self.margin:
      self.found_step = self.low_step
      return "found"
    return ""


class Online:
  """T3S online in a running SFT loop (module doc): ``on_eval`` after each evaluation,
  a batch view (``online(step, batch)``: the anchors leave the loss once the bottleneck
  is known), ``state`` into each checkpoint's data.

  The parameters at the lowest evaluation so far are saved under ``WORKDIR/t3s`` (an
  Orbax checkpoint), so a resumed run finds its bottleneck again.
  """

  def __init__(self, run, scorer, start_state, margin: float):
    from jaxpost import checkpoint, scoring

    self.run = run
    self.start = start_state
    self.detector = Bottleneck(margin=margin, **run.data_state.get("t3s", {}))
    self.logp = scoring.jit_logp(scorer)
    self.dir = os.path.join(run.workdir, "t3s")
    self.snapshots = checkpoint.Checkpointer(
      os.path.join(self.dir, "checkpoints"), keep=1, async_save=False
    )
    self.bottleneck = None
    if self.detector.found_step >= 0:  # resumed after the switch
      self.bottleneck = self._load(self.detector.found_step)

  def _load(self, step: int):
    from jaxpost import checkpoint

    params, _ = checkpoint.load_params(self.dir, self.run.state.params, what="t3s", step=step)
    return self.run.place(params), self.run.frozen["rest"]

  def on_eval(self, step: int, metrics: dict) -> None:
    event = self.detector.observe(step, float(metrics["eval/accuracy"]))
    if event == "low" and step not in self.snapshots.all_steps():
      self.snapshots.save(step, {"params": self.run.state.params}, {"step": step}, force=True)
    elif event == "found":
      self.bottleneck = self._load(self.detector.found_step)
      logging.warning(
        "T3S online: imitation bottleneck at step %d (accuracy %s, first %s); anchor "
        "tokens leave the loss from step %d",
        self.detector.found_step,
        self.detector.low,
        self.detector.first,
        step + 1,
      )

  def keep(self, batch) -> np.ndarray | None:
    """The batch's keep mask once the bottleneck is known; None before (keep all)."""
    if self.bottleneck is None:
      return None
    placed = self.run.place_batch(batch)
    start = self.logp(self.start, placed)[0]
    low = self.logp(self.bottleneck, placed)[0]
    return np.asarray(anchor_keep(start, low, placed.loss_mask), np.float32)

  def __call__(self, step: int, batch):
    keep = self.keep(batch)
    return batch if keep is None else batch.replace(loss_mask=batch.loss_mask * keep)

  def state(self) -> dict:
    """The detector's state, without its margin (that comes from the config)."""
    kept = dataclasses.asdict(self.detector)
    kept.pop("margin")
    return {"t3s": kept}


def main(argv=None) -> None:
  from absl import app, flags
  from ml_collections import config_flags

  config_flag = config_flags.DEFINE_config_file("config", None, "the restarted SFT config")
  out = flags.DEFINE_string("out", None, "shard directory to write")
  start = flags.DEFINE_string("start", None, "theta_0: a run or zoo:NAME")
  bottleneck = flags.DEFINE_string("bottleneck", None, "theta_b: RUN_DIR[@STEP]")
  flags.mark_flags_as_required(["config", "out", "start", "bottleneck"])

  def run(_):
    meta = write(config_flag.value, out.value, start=start.value, bottleneck=bottleneck.value)
    print(json.dumps({"out": out.value, "bottleneck_step": meta["bottleneck_step"]}))

  app.run(run, argv=argv)


if __name__ == "__main__":
  main()
