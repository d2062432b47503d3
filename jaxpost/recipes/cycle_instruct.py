"""Cycle-Instruct (arXiv 2508.16100): seed-free instruction data from a raw corpus by
dual self-training, top to bottom (``recipe=cycle_instruct``; methods card section 7).

    corpus    ``cycle.corpus`` (a text file, paragraphs between blank lines) or, when
              empty, an unpaired corpus of ``data.levels``' problems
              (``datagen.cycle.task_corpus``: questions of some, worked answers of
              others); split by the card's heuristic into D_Q (a "?" in it) and D_A.
              ``cycle.rewrite=task`` turns "What is X?" into the task's prompt X (the
              fixed rewriting step; the tiny tokenizers spell no letters)
    models    M_QA (question -> answer) and M_AQ (answer -> question): the same base
              (``train.init_from`` or ``model.gguf``) with an adapter each (``lora.*``)
    cycle c   1. a^_i = M_QA(q_i) for every q_i in D_Q
              2. M_AQ: ``cycle.steps`` SFT steps on (a^_i -> q_i)
              3. q^_j = M_AQ(a_j) for every a_j in D_A
              4. M_QA: ``cycle.steps`` SFT steps on (q^_j -> a_j)
              the target of every step is an original paragraph, never a generation
    final     ``cycle.final``:
                qa       the last M_QA, evaluated as it is
                retrain  a fresh adapter on the base, ``cycle.final_steps`` SFT steps on
                         D_final = the last cycle's (q^_j -> a_j), after Cycle-Filt when
                         ``cycle.filter_frac`` > 0 (below)
                gold     the same retraining on the corpus's true pairs (q_j -> a_j):
                         ALL-SFT, the supervised reference (task corpora only: they know
                         which question each answer belongs to)

Cycle-Filt: each pair's pseudo side goes through the opposite model (a'_j =
M_QA(q^_j)); its distance to the original is 1 - cos between the frozen base's mean
final hidden states (``datagen.core.Embedder``; the paper's LLaMA-3 encoder is not
available here); k-means (``cycle.clusters``, the paper's 200, capped at the pairs)
over the originals' embeddings; the ceil(frac) farthest pairs of each cluster dropped.

Each phase is an ordinary SFT run (this config's model, optimizer, loss, batch) in
``<workdir>/cycle<c>/{aq,qa}`` on a datagen dataset (``data.jsonl`` + manifest, with
each record's provenance) written next to it, started from the same model's previous
phase: its adapter carries over, the optimizer restarts (the paper does not say; as in
MoT). A finished phase is skipped, so a killed run continues. The final model is
evaluated by an SFT run in ``<workdir>`` itself, so its metrics are where any run's
are; the cycle's own numbers (construction cost, and on a task corpus how often a^ is
right and q^ is the true question) are in ``cycle.json`` and the last metrics record.
Not found in the paper: the number of cycles, steps per phase and the rewriting prompt.
"""

from __future__ import annotations

import json
import logging
import os
import re
import time

import numpy as np
from ml_collections import config_dict

from jaxpost import config_lib, fields, zoo
from jaxpost.datagen import core
from jaxpost.datagen import cycle as cycle_data
from jaxpost.recipes import common, register, sft

LOSS_FAMILIES = ("token",)
DEFAULT_LOSS = "cross_entropy"
FINALS = ("qa", "retrain", "gold")
REWRITES = ("task", "none")
STATE_FILE = "cycle.json"


def config_sections(c: config_dict.ConfigDict) -> None:
  """The ``cycle`` section; train.steps is unused (phases train cycle.steps each)."""
  c.cycle = config_dict.ConfigDict()
  c.cycle.corpus = ""  # a UTF-8 text file, paragraphs between blank lines; "" = task corpus
  c.cycle.corpus_size = 512  # task corpus: this many questions and this many answers
  c.cycle.rewrite = "task"  # task: "What is X?" -> X | none: paragraphs as they are
  c.cycle.cycles = 2  # the four-step cycle, repeated (the paper's count: not found)
  c.cycle.steps = 100  # SFT steps of each model in each cycle
  c.cycle.qa_prompt = "{text}"  # M_QA's prompt around a question
  c.cycle.aq_prompt = "{text}"  # M_AQ's prompt around an answer
  c.cycle.max_new_tokens = 96  # generation (greedy at temperature 0)
  c.cycle.temperature = 0.0
  c.cycle.batch_size = 64  # generation batch
  c.cycle.final = "retrain"  # qa | retrain | gold (see the module docstring)
  c.cycle.final_steps = 200  # retrain / gold: SFT steps of the fresh adapter
  c.cycle.filter_frac = 0.05  # Cycle-Filt: fraction dropped per cluster; 0 = Cycle-Inst
  c.cycle.clusters = 200  # k of the k-means over the originals' embeddings
  fields.declare(
    "cycle",
    corpus=fields.TEXT,
    corpus_size=fields.integer(ge=1),
    rewrite=fields.one_of(REWRITES),
    cycles=fields.integer(ge=1),
    steps=fields.integer(ge=1),
    qa_prompt=fields.Custom("a template with {text}", _check_prompt),
    aq_prompt=fields.Custom("a template with {text}", _check_prompt),
    max_new_tokens=fields.integer(ge=1),
    temperature=fields.num(ge=0),
    batch_size=fields.integer(ge=1),
    final=fields.one_of(FINALS),
    final_steps=fields.integer(ge=1),
    filter_frac=fields.num(ge=0, lt=1),
    clusters=fields.integer(ge=1),
  )


def _check_prompt(value) -> None:
  if not isinstance(value, str) or "{text}" not in value:
    raise ValueError("expected a string containing {text}")
  value.format(text="")  # no other placeholder


def validate(c: config_dict.ConfigDict) -> None:
  if "cycle" not in c:
    raise config_lib.ConfigError(
      "recipe=cycle_instruct needs its own sections: start from configs/cycle_instruct.py"
    )
  if not (c.train.init_from or c.model.gguf):
    raise config_lib.ConfigError(
      "cycle_instruct: both models start from one base: set train.init_from or model.gguf"
    )
  if not c.lora.rank:
    raise config_lib.ConfigError("cycle_instruct: the two models are adapters: set lora.rank")
  if c.cycle.final == "gold" and c.cycle.corpus:
    raise config_lib.ConfigError(
      "cycle.final=gold needs the task corpus (cycle.corpus empty): a raw corpus has no pairs"
    )


@register("cycle_instruct")
def run(config, workdir: str) -> dict:
  """Runs Cycle-Instruct per ``config`` under ``workdir``; returns the final metrics."""
  config_lib.validate(config)
  cy = config.cycle
  questions, answers, truth = _corpus(config)
  logging.info("cycle_instruct: %d questions, %d answers", len(questions), len(answers))
  base = zoo.resolve(config.train.init_from) if config.train.init_from else ""
  tokens = config.tokenizer.path or base
  state = _read_state(workdir)
  qa, aq = base, base  # each model's latest run ("" = the base model itself)
  name = lambda run: run or config.model.gguf  # noqa: E731 (a record's model)
  for c in range(1, (0 if cy.final == "gold" else cy.cycles) + 1):
    here = os.path.join(workdir, f"cycle{c}")
    # 1-2: M_QA answers the real questions; M_AQ learns to give the question back.
    if not _finished(os.path.join(here, "aq"), cy.steps):
      pseudo_answers, stats = _generate(
        config, qa, [cy.qa_prompt.format(text=q) for q in questions]
      )
      state[f"cycle{c}/answers"] = stats | _answer_check(questions, pseudo_answers, truth)
      _phase(config, os.path.join(here, "aq"), aq, tokens, [
        core.record(cy.aq_prompt.format(text=a), q, model=name(qa), generated=a, cycle=c,
                    side="question")
        for a, q in zip(pseudo_answers, questions, strict=True)
      ])  # fmt: skip
      _save_state(workdir, state)  # a finished phase's numbers survive a kill
    aq = os.path.join(here, "aq")
    # 3-4: M_AQ asks the questions of the real answers; M_QA learns to give the answer.
    if not _finished(os.path.join(here, "qa"), cy.steps):
      pseudo_questions, stats = _generate(
        config, aq, [cy.aq_prompt.format(text=a) for a in answers]
      )
      state[f"cycle{c}/questions"] = stats | _question_check(
        config, answers, pseudo_questions, truth
      )
      _phase(config, os.path.join(here, "qa"), qa, tokens, [
        core.record(cy.qa_prompt.format(text=q), a, model=name(aq), generated=q, cycle=c,
                    side="answer")
        for q, a in zip(pseudo_questions, answers, strict=True)
      ])  # fmt: skip
      _save_state(workdir, state)  # a finished phase's numbers survive a kill
    qa = os.path.join(here, "qa")
  if cy.final == "qa":
    final = {"train.init_from": qa, "train.steps": 0}
  else:
    data = os.path.join(workdir, "final_data")
    if "final_pairs" not in state:  # D_final not written yet
      _write(data, _final_records(config, qa, aq, base, answers, truth, state), config)
      state["final_pairs"] = core.read_manifest(data)["records"]
      _save_state(workdir, state)
    final = {
      "train.init_from": config.train.init_from,
      "train.steps": cy.final_steps,
      "data.source": "jsonl",
      "data.path": os.path.join(data, core.DATA_FILE),
    }
  summary = sft.run(common.as_sft_config(config, **final, **{"tokenizer.path": tokens}), workdir)
  _finish(workdir, state, summary)
  return summary | _totals(state)


def _final_records(config, qa: str, aq: str, base: str, answers, truth, state) -> list[dict]:
  """D_final: the last cycle's (q^_j -> a_j) pairs, after Cycle-Filt when
  ``cycle.filter_frac`` > 0 (each with its distance and cluster), or with
  ``cycle.final=gold`` the answers' true questions."""
  cy = config.cycle
  if cy.final == "gold":
    pairs, by = [(_question(config, truth[a]), a) for a in answers], "corpus"
  else:
    last = _read_records(qa + "_data")  # what the last M_QA phase trained on
    pairs, by = [(r["provenance"]["generated"], r["response"]) for r in last], aq
  scores = [{}] * len(pairs)
  if cy.final == "retrain" and cy.filter_frac > 0:
    pairs, scores = _cycle_filter(config, qa, base, pairs, state)
  return [
    core.record(cy.qa_prompt.format(text=q), a, model=by or config.model.gguf, generated=q,
                side="answer", **score)
    for (q, a), score in zip(pairs, scores, strict=True)
  ]  # fmt: skip


# ------------------------------------------------------------------------------ corpus


def _corpus(config):
  """(questions, answers, truth): D_Q and D_A after the rewrite, and for a task corpus
  each text's ``Problem`` (empty for a user corpus)."""
  cy = config.cycle
  truth = {}
  if cy.corpus:
    if not os.path.isfile(cy.corpus):
      raise config_lib.ConfigError(f"cycle.corpus: no file {cy.corpus!r}")
    with open(cy.corpus, encoding="utf-8") as f:
      paragraphs = re.split(r"\n\s*\n", f.read())
  else:
    levels = config_lib.parse_levels(config.data.levels)
    paragraphs = cycle_data.task_corpus(levels, cy.corpus_size, seed=config.seed)
    truth = cycle_data.task_problems(levels, cy.corpus_size, seed=config.seed)
  questions, answers = cycle_data.split_corpus(paragraphs)
  if cy.rewrite == "task":
    truth = {cycle_data.rewrite_question(t): p for t, p in truth.items()}
    questions = [cycle_data.rewrite_question(q) for q in questions]

  if not questions or not answers:
    raise config_lib.ConfigError(
      f"cycle.corpus: {len(questions)} question and {len(answers)} answer paragraphs; "
      "the cycle needs both (a question paragraph contains '?')"
    )
  return questions, answers, truth


def _answer_check(questions, pseudo_answers, truth) -> dict:
  from jaxpost.data import tasks

  if not truth:
    return {}
  pairs = list(zip(questions, pseudo_answers, strict=True))
  return {  # exact (the task's format) and lenient (the last number, any wording)
    "answers_correct": float(np.mean([tasks.check_answer(truth[q], a) for q, a in pairs])),
    "answers_last_number": float(np.mean([tasks.check_last_number(truth[q], a) for q, a in pairs])),
  }


def _question(config, problem) -> str:
  """The corpus's question paragraph of a task problem, rewritten like the corpus."""
  text = cycle_data.question_paragraph(problem)
  return cycle_data.rewrite_question(text) if config.cycle.rewrite == "task" else text


def _question_check(config, answers, pseudo_questions, truth) -> dict:
  if not truth:
    return {}
  exact = [
    _question(config, truth[a]) == q.strip() for a, q in zip(answers, pseudo_questions, strict=True)
  ]
  return {"questions_exact": float(np.mean(exact))}


# ------------------------------------------------------------------------------ phases


def _author(config, run: str) -> core.Author:
  """The model of ``run`` (a phase's workdir or the base run), or the GGUF base."""
  return core.load_author(run or config.model.gguf)


def _generate(config, run: str, prompts: list[str]) -> tuple[list[str], dict]:
  """The model of ``run``'s response to each prompt, and what writing them cost."""
  cy = config.cycle
  writer = core.Writer(
    _author(config, run),
    max_new_tokens=cy.max_new_tokens,
    temperature=cy.temperature,
    batch_size=cy.batch_size,
    seed=config.seed,
  )
  out = [_paragraph(text) for text in writer(prompts)]
  cost = writer.cost
  return out, {"generated_tokens": cost.generated_tokens, "seconds": cost.seconds}


def _paragraph(generation: str) -> str:
  """A generation as the paragraph it stands for: the response template's empty think
  block (SFT renders a plain paragraph target as ``<think></think>X``) removed."""
  from jaxpost.data import template

  try:
    thinking, answer = template.split_response(generation)
  except ValueError:  # malformed tags: the text as written
    return generation
  return generation if thinking else answer


def _write(out_dir: str, records: list[dict], config) -> None:
  cy = config.cycle
  inputs = {
    "base": config.train.init_from or config.model.gguf,
    "corpus": cy.corpus or f"task:{config.data.levels}:{cy.corpus_size}",
    "seed": config.seed,
    "max_new_tokens": cy.max_new_tokens,
    "temperature": cy.temperature,
  }
  core.write_dataset(
    out_dir, records, method="cycle_instruct", inputs=inputs, counts={}, cost=core.Cost()
  )


def _finished(run: str, steps: int) -> bool:
  return core.latest_step(run) == steps


def _read_records(data_dir: str) -> list[dict]:
  core.read_manifest(data_dir)  # the hash checked: the file a phase trained on
  with open(os.path.join(data_dir, core.DATA_FILE), encoding="utf-8") as f:
    return [json.loads(line) for line in f]


def _phase(config, run: str, start: str, tokens: str, records: list[dict]) -> None:
  """``cycle.steps`` SFT steps from ``start`` on ``records`` in ``run``, its data in
  ``run + "_data"`` (a finished phase is not redone: ``_finished``)."""
  steps = config.cycle.steps
  data = run + "_data"
  _write(data, records, config)
  phase = common.phase_config(config, os.path.join(data, core.DATA_FILE), start, tokens, steps)
  sft.run(phase, run)


# --------------------------------------------------------------------------- Cycle-Filt


def _cycle_filter(config, qa: str, base: str, pairs, state: dict):
  """(the pairs Cycle-Filt keeps, their {distance, cluster}): a'_j = M_QA(q^_j),
  distance 1 - cos(emb(a_j), emb(a'_j)) under the frozen base, k-means over emb(a_j),
  the ceil(frac) farthest of each cluster dropped (``state["filter"]`` lists them)."""
  cy = config.cycle
  start = time.perf_counter()
  rebuilt, stats = _generate(config, qa, [cy.qa_prompt.format(text=q) for q, _ in pairs])
  embed = core.Embedder(_author(config, base))
  originals = embed([a for _, a in pairs])
  distances = cosine_distance(originals, embed(rebuilt))
  clusters = cycle_data.kmeans(originals, cy.clusters, seed=config.seed)
  keep = cycle_data.cycle_filter(distances, clusters, cy.filter_frac)
  scored = [
    {"distance": d, "cluster": k}
    for d, k in zip(distances.tolist(), clusters.tolist(), strict=True)
  ]
  state["filter"] = stats | {
    "seconds": time.perf_counter() - start,
    "cluster_sizes": np.bincount(clusters).tolist(),
    "kept": int(keep.sum()),
    "dropped": [scored[i] for i in np.flatnonzero(~keep)],
  }
  kept = np.flatnonzero(keep)
  return [pairs[i] for i in kept], [scored[i] for i in kept]


def cosine_distance(x: np.ndarray, y: np.ndarray) -> np.ndarray:
  """f64[N]: 1 - cos between the rows of ``x`` and ``y`` (0 for a zero row)."""
  x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
  norms = np.linalg.norm(x, axis=-1) * np.linalg.norm(y, axis=-1)
  return 1.0 - np.sum(x * y, -1) / np.where(norms > 0, norms, 1.0)


# ------------------------------------------------------------------------------- state


def _read_state(workdir: str) -> dict:
  path = os.path.join(workdir, STATE_FILE)
  if os.path.exists(path):
    with open(path, encoding="utf-8") as f:
      return json.load(f)
  return {}


def _save_state(workdir: str, state: dict) -> None:
  os.makedirs(workdir, exist_ok=True)
  with open(os.path.join(workdir, STATE_FILE), "w", encoding="utf-8") as f:
    json.dump(state, f, indent=1)


def _totals(state: dict) -> dict:
  """The construction cost over every generation (cycles and filter), and the cycles'
  diagnostics, as ``cycle/...`` metrics."""
  out = {"cycle/generated_tokens": 0.0, "cycle/generation_seconds": 0.0}
  for key, stats in state.items():
    if isinstance(stats, dict):
      out["cycle/generated_tokens"] += stats.get("generated_tokens", 0)
      out["cycle/generation_seconds"] += stats.get("seconds", 0.0)
      for name in ("answers_correct", "answers_last_number", "questions_exact", "kept"):
        if name in stats:  # cycle<c>/answers -> cycle/answers_correct_c<c>; filter/kept
          where = key.split("/")[0].replace("cycle", "c")
          out[f"cycle/{name}_{where}" if where != "filter" else "cycle/filter_kept"] = stats[name]
  out["cycle/final_pairs"] = state.get("final_pairs", 0)
  return out


def _finish(workdir: str, state: dict, summary: dict) -> None:
  """Writes ``cycle.json`` and, once, the cycle's metrics into ``metrics.jsonl`` at the
  final step (after the final run, which rewrites records past its resume point)."""
  from jaxpost.metrics import MetricWriter

  first = not state.get("done")
  state["done"] = True
  _save_state(workdir, state)
  if first:
    writer = MetricWriter(workdir)
    writer.write(int(summary.get("step", 0)), _totals(state))
    writer.close()
