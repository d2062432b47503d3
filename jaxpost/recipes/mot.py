"""Merge-of-Thought distillation (MoT, arXiv 2509.08814), top to bottom.

    theta_0 = the student's start (train.init_from, or a fresh model)
    for r in 1 .. R:                                   mot.rounds
      for k in 1 .. K:                                 one branch per teacher corpus
        theta_k = SFT(theta_{r-1}, D_k, S steps)       mot.branch_data[k], mot.steps_per_round
      theta_r = sum_k w_k theta_k                      mot.weights (uniform by default)
    evaluate theta_R on this config's data / eval sections

Each branch is an ordinary SFT run (``recipes.sft``, this config's model, optimizer,
loss and batch settings) in ``<workdir>/round<r>/branch<k>`` on the teacher's corpus
(JSONL, e.g. written by ``jaxpost.data.generated``), started from the previous round's
merge with a fresh optimizer state and its own S-step schedule (the paper does not say
whether optimizer state or schedule carry across rounds: this reading resets both, and
``optim.warmup_steps`` counts within a branch). Merges are ``jaxpost.merging.merge_runs``
run directories (``<workdir>/round<r>/merged``). Every branch and merge is resumable
and skipped once finished, so a killed MoT run continues where it stopped. The final
evaluation is a zero-step SFT run from the last merge in ``<workdir>`` itself, so it
reports exactly what any SFT run reports, where any run's metrics are. With K = 1 MoT
is R sequential S-step SFT segments on one corpus (tested).
"""

from __future__ import annotations

import logging
import os

from ml_collections import config_dict

from jaxpost import config_lib, fields, merging
from jaxpost.recipes import common, register, sft

LOSS_FAMILIES = ("token",)
DEFAULT_LOSS = "cross_entropy"


def config_sections(c: config_dict.ConfigDict) -> None:
  """The ``mot`` section; train.steps is unused (a branch trains mot.steps_per_round)."""
  c.mot = config_dict.ConfigDict()
  c.mot.branch_data = ()  # one JSONL corpus per teacher (K = its length)
  c.mot.rounds = 5  # R (the paper's default, from its reviews)
  c.mot.steps_per_round = 50  # S: SFT steps of each branch in each round
  c.mot.weights = ()  # merge weight per branch; () = uniform (the paper's merge)
  fields.declare(
    "mot",
    branch_data=fields.Custom("a tuple of JSONL paths", _check_paths),
    rounds=fields.integer(ge=1),
    steps_per_round=fields.integer(ge=1),
    weights=fields.Custom("a tuple of numbers >= 0, not all 0", _check_weights),
  )


def _check_paths(value) -> None:
  if not isinstance(value, tuple) or not all(isinstance(p, str) and p for p in value):
    raise ValueError("expected a tuple of paths")


def _check_weights(value) -> None:
  if not isinstance(value, tuple) or any(not isinstance(w, int | float) or w < 0 for w in value):
    raise ValueError("expected a tuple of numbers >= 0")
  if value and not sum(value) > 0:
    raise ValueError("the weights must not all be 0")


def validate(c: config_dict.ConfigDict) -> None:
  if "mot" not in c:  # a config built for another recipe, with recipe=mot set on it
    raise config_lib.ConfigError(
      "recipe=mot needs its own sections: start from configs/mot.py or base.get_config('mot')"
    )
  m = c.mot
  if not m.branch_data:
    raise config_lib.ConfigError("mot.branch_data: give one JSONL corpus per teacher")
  if m.weights and len(m.weights) != len(m.branch_data):
    raise config_lib.ConfigError(
      f"mot.weights has {len(m.weights)} entries for {len(m.branch_data)} branches"
    )


@register("mot")
def run(config, workdir: str) -> dict:
  """Runs MoT per ``config`` under ``workdir``; returns the final model's metrics."""
  config_lib.validate(config)
  m = config.mot
  missing = [p for p in m.branch_data if not os.path.isfile(p)]
  if missing:  # checked here, not in validate: shipped configs name corpora made later
    raise config_lib.ConfigError(f"mot.branch_data: no file {missing[0]!r}")
  start = config.train.init_from
  # Every branch on the student's token ids: its tokenizer.path, its start's, or else the
  # one the very first branch trains.
  tokens = config.tokenizer.path or start
  for r in range(1, m.rounds + 1):
    round_dir = os.path.join(workdir, f"round{r}")
    merged = os.path.join(round_dir, "merged")
    if not os.path.exists(os.path.join(merged, merging.MERGED_FILE)):
      branches = []
      for k, corpus in enumerate(m.branch_data):
        branch = os.path.join(round_dir, f"branch{k}")
        sft.run(common.phase_config(config, corpus, start, tokens, m.steps_per_round), branch)
        branches.append(branch)
        tokens = tokens or branch
      merging.merge_runs(branches, merged, m.weights or None, tokenizer=tokens)
      logging.info("MoT round %d: merged %d branches into %s", r, len(branches), merged)
    start = merged
  # The final model is evaluated in the MoT workdir itself, so its metrics.jsonl is where
  # a sweep or a person looks.
  final = {"train.init_from": start, "train.steps": 0, "tokenizer.path": config.tokenizer.path}
  return sft.run(common.as_sft_config(config, **final), workdir)
