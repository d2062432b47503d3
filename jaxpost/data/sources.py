"""Data sources by name: ``data.source`` is a key of ``SOURCES``.

A source says once what the framework needs to know about it, so a new one is one
``register(Source(...))`` and no branch elsewhere (pipeline, config validation, the run's
data fingerprint):

  build        (config, tok, dataset) -> (index -> encoded example, examples per epoch or
               None if unbounded); ``dataset`` is the user data read by ``read`` (None for
               a generated source)
  read         (path, split, skip_malformed) -> ``pipeline.Dataset``: user data; None =
               examples generated from ``data.levels`` (no file; held-out problems of
               their own, evaluated on ``eval.levels``)
  file         ``data.path`` must be one file (else a file or a directory)
  rows         data section -> rows per record, laid out adjacently (pairs: 2; choices:
               formats x choices; negatives: 1 + m); such a source needs
               ``data.pack=False`` and ``data.streams=1``, and whole records per micro-batch
  keyed        its batches say which dataset example each row is (``Batch.example_ids``)
  validate     config -> None: the source's own conditions (raises ``ConfigError``)
  fingerprint  data section -> dict: what identifies its data besides the path and the
               file's content hash (``workdir.data_fingerprint``)

Builders import their modules when called: this module imports nothing heavy.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable
from typing import Any


@dataclasses.dataclass(frozen=True)
class Source:
  name: str
  build: Callable[[Any, Any, Any], tuple[Callable, int | None]]
  read: Callable[[str, str, bool], Any] | None = None
  file: bool = False
  rows: Callable[[Any], int] | None = None
  keyed: bool = False
  validate: Callable[[Any], None] | None = None
  fingerprint: Callable[[Any], dict] | None = None

  @property
  def generated(self) -> bool:
    """Examples generated from ``data.levels`` (no user data)."""
    return self.read is None


SOURCES: dict[str, Source] = {}


def register(source: Source) -> Source:
  if source.name in SOURCES:
    raise ValueError(f"data source {source.name!r} is already registered")
  SOURCES[source.name] = source
  return source


def get(name: str) -> Source:
  try:
    return SOURCES[name]
  except KeyError:
    raise ValueError(f"unknown data.source {name!r}; expected one of {names()}") from None


def names() -> tuple[str, ...]:
  return tuple(SOURCES)


def generated() -> tuple[str, ...]:
  """The sources generated from ``data.levels``."""
  return tuple(n for n, s in SOURCES.items() if s.generated)


def keyed() -> tuple[str, ...]:
  """The sources whose batches carry ``example_ids``."""
  return tuple(n for n, s in SOURCES.items() if s.keyed)


# ------------------------------------------------------------------ the built-in sources


def _tasks(config, tok, dataset):
  from jaxpost.config_lib import parse_levels
  from jaxpost.data import corrupt, pipeline

  levels, tags = parse_levels(config.data.levels), tuple(config.data.prompt_tags)
  corruptions = corrupt.parse(config.data.corrupt)
  return pipeline.task_source(levels, tok, config.seed, tags, corruptions), None


def _choices(config, tok, dataset):
  from jaxpost.config_lib import parse_levels
  from jaxpost.data import choices

  formats = choices.parse_formats(config.data.choice_formats)
  levels = parse_levels(config.data.levels)
  source = choices.choices_source(
    levels, tok, config.seed, formats, config.data.choices, config.data.choice_response
  )
  return source, None


def _choice_rows(data) -> int:
  from jaxpost.data import choices

  return len(choices.parse_formats(data.choice_formats)) * data.choices


def _validate_choices(c) -> None:
  """The formats exist for every level; a loss reading the K*C groups (``formats`` /
  ``choices`` / ``span`` hyperparameters) agrees with the data."""
  from jaxpost.config_lib import ConfigError, parse_levels
  from jaxpost.data import choices

  try:
    formats = choices.parse_formats(c.data.choice_formats)
    for level in parse_levels(c.data.levels):
      choices.check_level(level, formats, c.data.choice_response)
  except ValueError as e:
    raise ConfigError(f"data.choice_formats={c.data.choice_formats!r}: {e}") from None
  if c.eval.choice_formats:
    try:
      evaluated = choices.parse_formats(c.eval.choice_formats)
      for level in parse_levels(c.eval.levels or c.data.levels):
        choices.check_level(level, evaluated, c.data.choice_response)
    except ValueError as e:
      raise ConfigError(f"eval.choice_formats={c.eval.choice_formats!r}: {e}") from None
  hp = c.loss.get(c.loss.name)
  if hp is not None and "formats" in hp and "choices" in hp:
    if (hp.formats, hp.choices) != (len(formats), c.data.choices):
      raise ConfigError(
        f"loss.{c.loss.name}.formats / choices = {hp.formats} / {hp.choices}, but the data "
        f"has {len(formats)} formats x {c.data.choices} choices"
      )
  if hp is not None and "span" in hp:
    want = "response" if c.data.choice_response == "solution" else "answer"
    if hp.span != want:
      raise ConfigError(
        f"loss.{c.loss.name}.span={hp.span!r}, but data.choice_response="
        f"{c.data.choice_response!r} choices are scored on span {want!r}"
      )


def _shuffled(config, tok, dataset):
  from jaxpost.data import pipeline

  source = pipeline.dataset_source(dataset.examples, tok, config.seed, dataset.where)
  return source, len(dataset)


def _paired(config, tok, dataset):
  from jaxpost.data.pairs import pair_source

  return pair_source(dataset.examples, tok, config.seed, dataset.where), len(dataset)


def _negatives(config, tok, dataset):
  from jaxpost.data.negatives import negative_source

  m = config.data.negatives
  source = negative_source(dataset.examples, tok, config.seed, dataset.group - 1, m, dataset.where)
  return source, len(dataset) // dataset.group * (1 + m)  # rows per epoch


def _validate_negatives(c) -> None:
  """A loss reading the negatives' layout (a ``negatives`` hyperparameter) agrees."""
  from jaxpost.config_lib import ConfigError

  hp = c.loss.get(c.loss.name)
  if hp is not None and "negatives" in hp and hp.negatives != c.data.negatives:
    raise ConfigError(
      f"loss.{c.loss.name}.negatives={hp.negatives}, but data.negatives="
      f"{c.data.negatives} rows of negatives follow each gold row"
    )


def _path_exists(c) -> None:
  from jaxpost.config_lib import ConfigError, checks_paths

  if checks_paths() and not os.path.exists(c.data.path):
    raise ConfigError(f"data.path={c.data.path!r}: no such file or directory")


def _read_jsonl(path, split, skip_malformed):
  import logging

  from jaxpost.data.jsonl import read_jsonl
  from jaxpost.data.pipeline import Dataset

  result = read_jsonl(path, skip_malformed=skip_malformed)  # never empty
  if result.skipped:
    logging.warning("skipped %d malformed records in %s", result.skipped, path)
  lines = result.lines
  return Dataset(result.examples, lambda i: f"{path}:{lines[i]}", result.skipped)


def _read_table(kind):
  def read(path, split, skip_malformed):
    import logging

    from jaxpost.data.pipeline import Dataset
    from jaxpost.data.tables import read_table

    table = read_table(kind, path, split=split, skip_malformed=skip_malformed)
    if table.skipped:
      logging.warning("skipped %d malformed rows in %s", table.skipped, path)
    return Dataset(table.examples, table.places.__getitem__, table.skipped)

  return read


def _read_tfds(path, split, skip_malformed):
  from jaxpost.data.jsonl import DataError
  from jaxpost.data.pipeline import Dataset
  from jaxpost.data.tfds_source import read_tfds

  examples = read_tfds(path, split)
  if len(examples) == 0:
    raise DataError(f"TFDS dataset {path!r} split {split!r} has no examples")
  return Dataset(examples, examples.where)


def _read_groups(reader: str, group: int | None = None):
  """A reader of ``jaxpost.data.pairs`` / ``negatives`` (records of adjacent examples)."""

  def read(path, split, skip_malformed):
    from jaxpost.data import negatives, pairs
    from jaxpost.data.pipeline import Dataset

    if reader == "negatives":
      examples, where, skipped, pool = negatives.read_negatives(path, skip_malformed=skip_malformed)
      return Dataset(examples, where, skipped, group=1 + pool)
    examples, where, skipped = getattr(pairs, reader)(path, skip_malformed=skip_malformed)
    return Dataset(examples, where, skipped, group=group)

  return read


def _read_adp(harness: str):
  def read(path, split, skip_malformed):
    import logging

    from jaxpost.data.adp import read_adp
    from jaxpost.data.pipeline import Dataset

    examples, where, skipped, units = read_adp(path, harness=harness, skip_malformed=skip_malformed)
    if skipped:
      logging.warning("skipped %d malformed trajectories in %s", skipped, path)
    return Dataset(examples, where, skipped, units=units)  # held out by trajectory

  return read


def _choices_fingerprint(d) -> dict:
  return {"choice_formats": d.choice_formats, "choices": d.choices}


register(Source("tasks", _tasks))
register(
  Source(
    "choices",  # F²C: each problem in K prompt formats x C choices
    _choices,
    rows=_choice_rows,
    validate=_validate_choices,
    fingerprint=_choices_fingerprint,
  )
)
register(Source("jsonl", _shuffled, read=_read_jsonl, file=True))
register(Source("parquet", _shuffled, read=_read_table("parquet"), validate=_path_exists))
register(Source("arrow", _shuffled, read=_read_table("arrow"), validate=_path_exists))
register(Source("tfds", _shuffled, read=_read_tfds))
# Agent trajectories (jaxpost/data/adp.py): one example per agent turn, its past as context
# (OpenHands' rendering); or one per trajectory in jaxpost's tool-rollout layout, the
# tools' outputs read but never trained on (``adp_rollout``).
register(Source("adp", _shuffled, read=_read_adp("openhands"), file=True))
register(Source("adp_rollout", _shuffled, read=_read_adp("rollout"), file=True))
for _name, _reader in (("pairs", "read_pairs"), ("rationales", "read_rationales")):
  # A preference pair / a record's label and rationale tasks, two adjacent rows.
  register(Source(_name, _paired, read=_read_groups(_reader, 2), file=True, rows=lambda d: 2))
register(
  Source(
    "negatives",  # DiscFT: a gold response and m negatives
    _negatives,
    read=_read_groups("negatives"),
    file=True,
    rows=lambda d: 1 + d.negatives,
    keyed=True,
    validate=_validate_negatives,
    fingerprint=lambda d: {"negatives": d.negatives},
  )
)
