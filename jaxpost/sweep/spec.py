"""What a sweep is: a base config, cells (overrides), seeds, and how to report them.

A sweep file under ``configs/sweeps/`` defines ``get_config(variant=None) -> Sweep``
(``configs/sweeps/NAME.py:VARIANT`` picks a variant, as config files do):

    from jaxpost.sweep import Sweep, cells, grid

    def get_config(variant=None):
      return Sweep(
        base="configs/sft.py:tiny",
        cells=grid({"optim.lr": [1e-3, 3e-3]}),   # or zipped({...}), cells({...}, ...)
        seeds=(0, 1, 2),
        fixed={"train.steps": 100},
        report={"metrics": ["eval/accuracy"], "baseline": "lr=0.001"},
      )

A cell's ``group`` names it without its seed: a row of the report, whose seeds give
its interval. Overrides are dotted config fields; in a string value ``{seed}`` becomes
the run's seed (``"zoo:rl-start@{seed}"``: each seed starts from its own model), and
``{root}`` the sweep's root folder when the run starts, so a cell can read what an
earlier cell wrote (``"{root}/runs/extract/seed{seed}/features"``; cells run in order,
so such a sweep runs with one worker). A cell may carry its own ``config`` (another
base), so one sweep can compare recipes.
"""

from __future__ import annotations

import dataclasses
import itertools
import os
import re
from collections.abc import Mapping, Sequence
from typing import Any

SEED_TOKEN = "{seed}"
ROOT_TOKEN = "{root}"  # replaced at launch (launch.command): the root is not known here


@dataclasses.dataclass(frozen=True)
class Cell:
  """One configuration of a sweep, before seeds: ``group`` names it in the report."""

  group: str
  overrides: Mapping[str, Any] = dataclasses.field(default_factory=dict)
  config: str | None = None  # None: the sweep's base


def _label(overrides: Mapping[str, Any]) -> str:
  # The last part of each field keeps names short: optim.lr=0.001,rl.epochs=2 -> lr=0.001,epochs=2
  return ",".join(f"{k.rsplit('.', 1)[-1]}={_short(v)}" for k, v in overrides.items()) or "base"


def _short(v: Any) -> str:
  return v if isinstance(v, str) else repr(v)


def grid(axes: Mapping[str, Sequence[Any]]) -> list[Cell]:
  """Every combination of the values of each field (the first field varies slowest)."""
  _check_axes(axes)
  fields = list(axes)
  combos = itertools.product(*(axes[f] for f in fields))
  return [
    Cell(_label(dict(zip(fields, c, strict=True))), dict(zip(fields, c, strict=True)))
    for c in combos
  ]


def zipped(axes: Mapping[str, Sequence[Any]]) -> list[Cell]:
  """The i-th value of every field together: lists of one length."""
  _check_axes(axes)
  lengths = {f: len(v) for f, v in axes.items()}
  if len(set(lengths.values())) > 1:
    raise ValueError(f"zipped lists differ in length: {lengths}")
  fields = list(axes)
  rows = zip(*(axes[f] for f in fields), strict=True)
  return [
    Cell(_label(dict(zip(fields, r, strict=True))), dict(zip(fields, r, strict=True))) for r in rows
  ]


def cells(*items: Mapping[str, Any]) -> list[Cell]:
  """Explicit cells: dicts of overrides, with optional ``"name"`` (the group) and
  ``"config"`` (a base config of their own) keys."""
  out = []
  for item in items:
    overrides = {k: v for k, v in item.items() if k not in ("name", "config")}
    out.append(Cell(item.get("name") or _label(overrides), overrides, item.get("config")))
  return out


def product(*parts: Sequence[Cell]) -> list[Cell]:
  """Every cell of the first part combined with every cell of the next (names joined
  with ``,``; a later part's overrides and config win)."""
  out = [Cell("", {})]
  for part in parts:
    out = [
      Cell(
        ",".join(n for n in (a.group, b.group) if n and n != "base") or "base",
        {**a.overrides, **b.overrides},
        b.config or a.config,
      )
      for a in out
      for b in part
    ]
  return out


def _check_axes(axes: Mapping[str, Sequence[Any]]) -> None:
  for field, values in axes.items():
    if isinstance(values, str) or not isinstance(values, Sequence) or not values:
      raise ValueError(f"sweep axis {field!r} needs a non-empty list of values, got {values!r}")


@dataclasses.dataclass
class Sweep:
  """A sweep: ``cells`` x ``seeds`` runs of ``base`` with ``fixed`` overrides on all.

  Attributes:
    base: config spec of every cell without its own, e.g. ``"configs/grpo.py:quickstart"``.
    cells: the configurations (``grid`` / ``zipped`` / ``cells`` / ``product``).
    seeds: each cell runs once per seed (``config.seed``).
    fixed: overrides of every run (a cell's own win).
    report: defaults of ``jaxpost.sweep.report`` (metrics, baseline, curves, scale, unit).
    name: the sweep's name (default: the file's).
  """

  base: str
  cells: Sequence[Cell] = (Cell("base"),)
  seeds: Sequence[int] = (0, 1, 2)
  fixed: Mapping[str, Any] = dataclasses.field(default_factory=dict)
  report: Mapping[str, Any] = dataclasses.field(default_factory=dict)
  name: str = ""

  def runs(self) -> list[RunSpec]:
    """Every (cell, seed) run, cell by cell; raises ValueError on clashing names."""
    if not self.seeds or len(set(self.seeds)) != len(self.seeds):
      raise ValueError(f"seeds must be distinct and at least one, got {tuple(self.seeds)}")
    groups = [c.group for c in self.cells]
    clash = sorted({g for g in groups if groups.count(g) > 1})
    if clash:
      raise ValueError(f"cells share the group name(s) {clash}: give them distinct 'name's")
    slugs = {}
    for g in groups:
      s = slug(g)
      if s in slugs:
        raise ValueError(f"groups {slugs[s]!r} and {g!r} map to one directory {s!r}; rename one")
      slugs[s] = g
    out = []
    for cell in self.cells:
      for seed in self.seeds:
        overrides = {**self.fixed, **cell.overrides, "seed": int(seed)}
        overrides = {k: _with_seed(v, int(seed)) for k, v in overrides.items()}
        out.append(
          RunSpec(
            id=f"{slug(cell.group)}/seed{seed}",
            group=cell.group,
            seed=int(seed),
            config=cell.config or self.base,
            overrides=overrides,
          )
        )
    return out


@dataclasses.dataclass(frozen=True)
class RunSpec:
  """One run of a sweep: ``python -m jaxpost.main --config=CONFIG --config.K=V ...``."""

  id: str  # "<group slug>/seed<k>": also its workdir under <root>/runs/
  group: str
  seed: int
  config: str
  overrides: Mapping[str, Any]


def _with_seed(value: Any, seed: int) -> Any:
  return value.replace(SEED_TOKEN, str(seed)) if isinstance(value, str) else value


def slug(group: str) -> str:
  """A directory name for a group: letters, digits and ``._=,+-``; others become ``_``."""
  return re.sub(r"[^A-Za-z0-9._=,+-]", "_", group.replace("/", "_div")) or "_"


def load(spec: str) -> Sweep:
  """``path/to/sweep.py[:variant]`` -> its ``get_config(variant)`` (named after the file)."""
  from jaxpost import config_lib

  path, _, variant = spec.partition(":")
  if not os.path.isfile(path):
    raise FileNotFoundError(f"no sweep file {path!r}")
  module = config_lib._import_file(path, f"jaxpost_sweep_{slug(os.path.basename(path))}")
  if not hasattr(module, "get_config"):
    raise ValueError(f"{path} defines no get_config()")
  sweep = module.get_config(variant) if variant else module.get_config()
  if not isinstance(sweep, Sweep):
    raise TypeError(f"{path}: get_config() returned {type(sweep).__name__}, not a Sweep")
  if not sweep.name:
    stem = os.path.splitext(os.path.basename(path))[0]
    sweep.name = f"{stem}-{variant}" if variant else stem
  return sweep
