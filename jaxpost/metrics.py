"""Metrics to ``<workdir>/metrics.jsonl`` and TensorBoard event files, plus a PNG plot.

Keys are slash-named (``train/loss``, ``eval/accuracy``); every JSONL line is one
JSON object with ``step``. Only process 0 writes (multi-host runs call every writer).
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping

import jax
import numpy as np


def _scalar(v) -> float:
  return float(np.asarray(v))


class MetricWriter:
  """Writes scalars to JSONL and TensorBoard; a no-op on processes other than 0."""

  def __init__(self, workdir: str, *, enabled: bool | None = None, resume_step: int | None = None):
    """Opens the run's metrics for appending.

    Args:
      workdir: the run directory.
      enabled: write (default: on process 0 only).
      resume_step: the step the run resumes from (the restored checkpoint's; -1 for a
        run with no checkpoint yet). Records past it were written by an interrupted
        run and are about to be written again, so they are dropped first: the JSONL
        file is rewritten atomically without them and TensorBoard purges them, so every
        step appears once however often and wherever the run was killed. None keeps
        everything.
    """
    self.enabled = jax.process_index() == 0 if enabled is None else enabled
    self.path = os.path.join(workdir, "metrics.jsonl")
    self._jsonl = None
    self._tb = None
    if self.enabled:
      os.makedirs(workdir, exist_ok=True)
      if resume_step is not None:
        _drop_records_after(self.path, resume_step)
      self._jsonl = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 (closed in close())
      from tensorboardX import SummaryWriter

      purge = {} if resume_step is None else {"purge_step": resume_step + 1}
      self._tb = SummaryWriter(os.path.join(workdir, "tensorboard"), **purge)

  def write(self, step: int, metrics: Mapping[str, object]) -> None:
    if not self.enabled:
      return
    record = {"step": int(step)}
    for k, v in metrics.items():
      x = _scalar(v)
      record[k] = x if math.isfinite(x) else str(x)  # JSON has no NaN/inf
      self._tb.add_scalar(k, x, int(step))
    self._jsonl.write(json.dumps(record) + "\n")
    self._jsonl.flush()

  def close(self) -> None:
    if self.enabled:
      self._jsonl.close()
      self._tb.close()


def _drop_records_after(path: str, step: int) -> int:
  """Rewrites ``path`` (atomically) without the records whose step is > ``step``.

  A torn last line (a kill mid-write) is dropped too. Returns how many lines went.
  """
  if not os.path.exists(path):
    return 0
  with open(path, encoding="utf-8") as f:
    lines = f.readlines()
  kept = []
  for line in lines:
    try:
      record = json.loads(line)
    except json.JSONDecodeError:
      continue
    if int(record.get("step", 0)) <= step:
      kept.append(line if line.endswith("\n") else line + "\n")
  if len(kept) != len(lines):
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
      f.writelines(kept)
      f.flush()
      os.fsync(f.fileno())
    os.replace(tmp, path)
  return len(lines) - len(kept)


def read_jsonl_metrics(path: str) -> list[dict]:
  with open(path, encoding="utf-8") as f:
    return [json.loads(line) for line in f if line.strip()]


def plot_metrics(
  path: str,
  out_png: str,
  panels: tuple[str, ...] = ("train/loss", "eval/accuracy/*"),
  log_scale: tuple[str, ...] = ("train/loss",),
) -> str:
  """Plots metrics.jsonl series against step, one panel per entry of ``panels``.

  A panel ``prefix/*`` overlays every series under ``prefix/`` (e.g. accuracy per level);
  series logged only once (final-only evaluations) are drawn as single markers.
  """
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  records = read_jsonl_metrics(path)
  all_keys = sorted({k for r in records for k in r if k != "step"})

  def series_of(panel: str) -> list[str]:
    if panel.endswith("/*"):
      return [k for k in all_keys if k.startswith(panel[:-1])]
    return [panel] if panel in all_keys else []

  panels = tuple(p for p in panels if series_of(p))
  fig, axes = plt.subplots(1, max(1, len(panels)), figsize=(5.5 * max(1, len(panels)), 3.8))
  axes = np.atleast_1d(axes)
  for ax, panel in zip(axes, panels, strict=False):
    for key in series_of(panel):
      pts = sorted((r["step"], float(r[key])) for r in records if key in r)
      label = key.rsplit("/", 1)[-1] if panel.endswith("/*") else None
      marker = "o" if len(pts) < 30 else None
      ax.plot([p[0] for p in pts], [p[1] for p in pts], marker=marker, label=label)
    if panel in log_scale:
      ax.set_yscale("log")
    if panel.endswith("/*"):
      ax.legend(fontsize=7, ncol=2)
    ax.set_xlabel("step")
    ax.set_title(panel.rstrip("/*"))
    ax.grid(alpha=0.3)
  fig.tight_layout()
  fig.savefig(out_png, dpi=110)
  plt.close(fig)
  return out_png
