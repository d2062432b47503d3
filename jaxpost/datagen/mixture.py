"""Data composition across training stages: DMT (Dong et al. 2024) and its baselines.

DMT, dual-stage mixed fine-tuning, trains the specialised abilities first on their full
data and then the general one with a fraction k of the specialised data mixed back in:

  stage 1   theta_1 = SFT(theta_0, D_spec)
  stage 2   theta_2 = SFT(theta_1, D_general ∪ Sample_k(D_spec))

against multi-task training (one stage on D_spec ∪ D_general) and sequential training
(k = 0). ``build`` writes each stage's dataset (``jaxpost.datagen`` format: a
``data.jsonl`` and its manifest; every record says its source and level) from task
levels, so the stages are two chained SFT runs (``configs/dmt.py``; stage 2 starts from
stage 1's workdir through ``train.init_from``).

``stratified_sample`` takes exactly ceil(k x |D_spec|) records, split over the sources
(task levels) in proportion to their sizes (largest remainders), the same records for
the same seed. The paper's k and whether the sample is redrawn each epoch were not
found; here it is drawn once (the card's proposal) and k is the caller's.

  python -m jaxpost.datagen.mixture --spec=mul2x2:1.0 --general=expr2:1.0,add5:1.0 \\
      --n_spec=1600 --n_general=1600 --k=0.0625 --out=runs/data/dmt
"""

from __future__ import annotations

import argparse
import json
import math
import os
from collections.abc import Sequence

import numpy as np

from jaxpost.data import tasks, template
from jaxpost.datagen import core

STAGES = ("stage1", "stage2", "multitask")


def task_records(levels: dict[str, float], n: int, seed: int, source: str) -> list[dict]:
  """The gold records of training problems 0 .. n - 1 of the mixture ``levels``."""
  mixture = tasks.mixture(levels, "train", seed)
  out = []
  for i in range(n):
    p = mixture.problem_at(i)
    out.append(
      core.record(
        p.prompt, template.render_response(p.example), source=source, level=p.level, index=i
      )
    )
  return out


def allocate(sizes: Sequence[int], total: int) -> list[int]:
  """``total`` split over strata of ``sizes`` in proportion (largest remainders; ties to
  the earlier stratum), never more than a stratum holds."""
  n = sum(sizes)
  if not 0 <= total <= n:
    raise ValueError(f"cannot take {total} of {n}")
  if n == 0:
    return [0] * len(sizes)
  quotas = [total * s / n for s in sizes]
  base = [math.floor(q) for q in quotas]
  order = sorted(range(len(sizes)), key=lambda i: (-(quotas[i] - base[i]), i))
  for i in order[: total - sum(base)]:
    base[i] += 1
  return base


def stratified_sample(records: Sequence[dict], k: float, seed: int, key: str = "level"):
  """ceil(k x len(records)) records, stratified by ``provenance[key]``, in their order."""
  if not 0.0 <= k <= 1.0:
    raise ValueError(f"k must be in [0, 1], got {k}")
  total = math.ceil(k * len(records) - 1e-9)
  strata: dict[str, list[int]] = {}
  for i, r in enumerate(records):
    strata.setdefault(str(r["provenance"][key]), []).append(i)
  names = sorted(strata)
  counts = allocate([len(strata[s]) for s in names], total)
  rng = np.random.default_rng(seed)
  chosen = []
  for name, count in zip(names, counts, strict=True):
    members = strata[name]
    chosen += [members[j] for j in rng.permutation(len(members))[:count]]
  return [records[i] for i in sorted(chosen)]


def shuffled(records: Sequence[dict], seed: int) -> list[dict]:
  return [records[i] for i in np.random.default_rng(seed).permutation(len(records))]


def build(
  spec: dict[str, float],
  general: dict[str, float],
  n_spec: int,
  n_general: int,
  k: float,
  out_dir: str,
  *,
  seed: int = 0,
) -> dict[str, dict]:
  """Writes ``out_dir/{stage1,stage2,multitask}``: D_spec, D_general ∪ Sample_k(D_spec)
  (shuffled together) and D_spec ∪ D_general (shuffled). Returns their manifests."""
  d_spec = task_records(spec, n_spec, seed, "spec")
  d_general = task_records(general, n_general, seed + 1, "general")
  kept = stratified_sample(d_spec, k, seed)
  stages = {
    "stage1": d_spec,
    "stage2": shuffled(d_general + kept, seed),
    "multitask": shuffled(d_spec + d_general, seed),
  }
  inputs = dict(spec=spec, general=general, n_spec=n_spec, n_general=n_general, k=k, seed=seed)
  out = {}
  for name, records in stages.items():
    counts = {"spec": sum(r["provenance"]["source"] == "spec" for r in records)}
    counts["general"] = len(records) - counts["spec"]
    out[name] = core.write_dataset(
      os.path.join(out_dir, name), records, method=f"dmt/{name}", inputs=inputs,
      counts=counts, cost=core.Cost(),
    )  # fmt: skip
  return out


def main(argv=None) -> None:
  from jaxpost import config_lib

  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--spec", required=True, help="the specialised levels, e.g. 'mul2x2:1.0'")
  p.add_argument("--general", required=True, help="the general levels")
  p.add_argument("--n_spec", type=int, required=True)
  p.add_argument("--n_general", type=int, required=True)
  p.add_argument("--k", type=float, required=True, help="fraction of D_spec in stage 2")
  p.add_argument("--out", required=True)
  p.add_argument("--seed", type=int, default=0)
  a = p.parse_args(argv)
  manifests = build(
    config_lib.parse_levels(a.spec),
    config_lib.parse_levels(a.general),
    a.n_spec,
    a.n_general,
    a.k,
    a.out,
    seed=a.seed,
  )
  print(json.dumps({name: m["counts"] for name, m in manifests.items()}))


if __name__ == "__main__":
  main()
