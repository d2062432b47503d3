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

  def __init__(self, workdir: str, *, enabled: bool | None = None):
    self.enabled = jax.process_index() == 0 if enabled is None else enabled
    self.path = os.path.join(workdir, "metrics.jsonl")
    self._jsonl = None
    self._tb = None
    if self.enabled:
      os.makedirs(workdir, exist_ok=True)
      self._jsonl = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 (closed in close())
      from tensorboardX import SummaryWriter

      self._tb = SummaryWriter(os.path.join(workdir, "tensorboard"))

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


def read_jsonl_metrics(path: str) -> list[dict]:
  with open(path, encoding="utf-8") as f:
    return [json.loads(line) for line in f if line.strip()]


def plot_metrics(
  path: str, out_png: str, keys: tuple[str, ...] = ("train/loss", "eval/accuracy")
) -> str:
  """Plots each key of a metrics.jsonl against step, one panel per key."""
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  records = read_jsonl_metrics(path)
  keys = tuple(k for k in keys if any(k in r for r in records))
  fig, axes = plt.subplots(1, max(1, len(keys)), figsize=(5 * max(1, len(keys)), 3.5))
  axes = np.atleast_1d(axes)
  for ax, key in zip(axes, keys, strict=False):
    pts = sorted((r["step"], float(r[key])) for r in records if key in r)
    ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o" if len(pts) < 30 else None)
    ax.set_xlabel("step")
    ax.set_title(key)
    ax.grid(alpha=0.3)
  fig.tight_layout()
  fig.savefig(out_png, dpi=110)
  plt.close(fig)
  return out_png
