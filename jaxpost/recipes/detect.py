"""Hallucination detection on a frozen model, top to bottom (``recipe=detect``).

    answers   the model's responses to task questions (``jaxpost.data.generated``:
              greedy or sampled, labelled by the task checkers), or a user's JSONL of
              (question, answer, label) records (``detect.records``); with
              ``detect.se_samples``, N more sampled answers per question give its
              semantic entropy (answers clustered by their final answer)
    features  one forward pass of the frozen model per answer batch
              (``jaxpost.detection.features``), written under WORKDIR/features; or read
              from ``detect.features`` (another run's), with no model at all
    split     test answers: those to a seeded fraction of the questions, or every answer
              at ``detect.test_levels`` (transfer across levels / task families: the
              heads train on the other levels); with ``detect.test_features`` (another
              model's features, same widths) they come from that model (transfer across
              models); training labels thinned to ``detect.label_fraction``; a fraction
              of the training questions kept apart (``detect.calibration_fraction``) to
              pick each head's stopping step and calibrate probabilities
    detectors FLaG, the linear and MLP probes, Mahalanobis and the unsupervised scores
              fitted on the training answers (``jaxpost.detection.compare``)
    report    every metric with bootstrap intervals on the test answers: results.md,
              results.json and ROC / reliability plots in the workdir

Nothing here trains the language model; the frozen model is ``train.init_from`` (a run
or zoo model, with its tokenizer) or ``model.gguf`` / ``model.hf_dir``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os

import numpy as np
from ml_collections import config_dict

from jaxpost import config_lib, fields
from jaxpost import workdir as jaxpost_workdir
from jaxpost.data import template
from jaxpost.detection import baselines, compare, features, flag
from jaxpost.recipes import common, register

LOSS_FAMILIES = ()  # the language model is frozen: no LM loss
DEFAULT_LOSS = None
FAMILY_KINDS = ("last", "mean", "drift", "tokens", "instability")


def config_sections(c: config_dict.ConfigDict) -> None:
  c.detect = config_dict.ConfigDict()
  c.detect.records = ""  # a JSONL of (question, answer, label) to score instead of generating
  c.detect.features = ""  # a features dir (another detect run's): train heads only
  c.detect.test_features = ""  # a features dir whose answers are the test set (another model)
  c.detect.questions = 1000  # task questions answered (data.levels' training mixture)
  c.detect.samples = 1  # answers per question
  c.detect.temperature = 0.0  # 0 = greedy answers; > 0 samples them
  c.detect.max_new_tokens = 64  # decode budget per answer
  c.detect.batch_size = 64  # questions per sampler call / answers per feature batch
  c.detect.se_samples = 0  # > 0: sampled answers per question for semantic entropy
  c.detect.se_temperature = 1.0  # their sampling temperature
  c.detect.test_levels = ""  # "" = a random split; else test on the answers at these levels
  c.detect.test_fraction = 0.3  # random split: fraction of questions held out
  c.detect.label_fraction = 1.0  # training answers whose labels the detectors see
  c.detect.calibration_fraction = 0.2  # of those, questions kept apart for Platt scaling
  c.detect.layers = "-1"  # blocks whose hidden states are read (comma list; -1 = last)
  c.detect.families = "last,mean,drift,tokens,instability"  # FLaG's feature families
  c.detect.probe = "last"  # the probes' and Mahalanobis' family (at the first layer)
  c.detect.groups = 64  # FLaG's K
  c.detect.proj_dim = 32  # per-family projection width (0 = none)
  c.detect.energy = "dot"  # router energy: dot | distance
  c.detect.router_temperature = 1.0  # tau of the router's softmax
  c.detect.loss = "bce"  # bce | ranking
  c.detect.steps = 500  # head training steps (AdamW)
  c.detect.lr = 3e-3  # head learning rate
  c.detect.weight_decay = 1e-4  # AdamW's decoupled decay of the heads
  c.detect.early_stopping = True  # each head stops at its best loss on the calibration answers
  c.detect.eval_every = 10  # head steps between those evaluations
  c.detect.bootstrap = 1000  # resamples of every interval
  fields.declare(
    "detect",
    records=fields.TEXT,
    features=fields.TEXT,
    test_features=fields.TEXT,
    questions=fields.integer(ge=2),
    samples=fields.integer(ge=1),
    temperature=fields.num(ge=0),
    max_new_tokens=fields.integer(ge=1),
    batch_size=fields.integer(ge=1),
    se_samples=fields.integer(ge=0),
    se_temperature=fields.num(gt=0),
    test_levels=fields.TEXT,
    test_fraction=fields.num(gt=0, lt=1),
    label_fraction=fields.num(gt=0, le=1),
    calibration_fraction=fields.num(gt=0, lt=1),
    layers=fields.TEXT,
    families=fields.TEXT,
    probe=fields.one_of(("last", "mean", "drift")),
    groups=fields.integer(ge=1),
    proj_dim=fields.integer(ge=0),
    energy=fields.one_of(flag.ENERGIES),
    router_temperature=fields.num(gt=0),
    loss=fields.one_of(flag.LOSSES),
    steps=fields.integer(ge=1),
    lr=fields.num(gt=0),
    weight_decay=fields.num(ge=0),
    early_stopping=fields.FLAG,
    eval_every=fields.integer(ge=1),
    bootstrap=fields.integer(ge=10),
  )


def validate(c: config_dict.ConfigDict) -> None:
  if "detect" not in c:
    raise config_lib.ConfigError("recipe=detect needs its sections: start from configs/flag.py")
  d = c.detect
  kinds = [k.strip() for k in d.families.split(",") if k.strip()]
  bad = [k for k in kinds if k not in FAMILY_KINDS]
  if not kinds or bad:
    raise config_lib.ConfigError(f"detect.families={d.families!r}: kinds from {FAMILY_KINDS}")
  _layers(d.layers)
  if d.records and d.features:
    raise config_lib.ConfigError("set one of detect.records and detect.features")
  if not (d.records or d.features or c.train.init_from or c.model.gguf or c.model.hf_dir):
    raise config_lib.ConfigError(
      "which model's answers? set train.init_from (a run or zoo:NAME), model.gguf or "
      "model.hf_dir (or detect.features / detect.records)"
    )


def _layers(spec: str) -> tuple[int, ...]:
  try:
    layers = tuple(int(x) for x in spec.split(",") if x.strip())
  except ValueError:
    raise config_lib.ConfigError(f"detect.layers={spec!r}: comma-separated ints") from None
  if not layers:
    raise config_lib.ConfigError("detect.layers is empty")
  return layers


@register("detect")
def run(config, workdir: str) -> dict:
  """Scores a frozen model's answers per ``config`` in ``workdir``; returns the table."""
  mesh = common.validate_and_start(config, workdir, "detect")
  d = config.detect

  # Answers and their features (or another run's features).
  out = os.path.join(workdir, "features")
  if d.features:
    train_f = _stored(d.features)
  elif os.path.exists(os.path.join(out, "features.json")):  # a resumed run: same config
    logging.info("reusing the features this run extracted: %s", out)
    train_f = _stored(out)
  else:
    model, tok = _frozen_model(config, workdir)
    try:
      layers = features.resolve_layers(_layers(d.layers), model.config.n_layers)
    except ValueError as e:
      raise config_lib.ConfigError(f"detect.layers: {e}") from None
    records = features.read_records(d.records) if d.records else _answers(
      config, model, tok, config.data.levels, os.path.join(workdir, "answers.jsonl")
    )  # fmt: skip
    se = _semantic(config, model, tok, config.data.levels, workdir) if not d.records else None
    _extract(model, tok, records, layers, d, out, se, mesh)
    train_f = _stored(out)
  test_f = _stored(d.test_features) if d.test_features else None

  # The split, the detectors, the table.
  train_f, calib_f, test_f = _split(train_f, test_f, d, config.seed)
  names = _family_names(d, train_f)
  probe = _first_layer_family(d.probe, train_f)
  settings = compare.HeadSettings(
    groups=d.groups, proj_dim=d.proj_dim, energy=d.energy, temperature=d.router_temperature,
    loss=d.loss, steps=d.steps, lr=d.lr, weight_decay=d.weight_decay, eval_every=d.eval_every,
  )  # fmt: skip
  y_train, y_calib, y_test = train_f["label"], calib_f["label"], test_f["label"]
  for name, y in (("training", y_train), ("calibration", y_calib), ("test", y_test)):
    if y.min() == y.max():
      raise config_lib.ConfigError(
        f"every {name} answer is {'correct' if y[0] else 'incorrect'}: no detector can be "
        "trained or scored (a model that is sometimes right, or more questions)"
      )
  scorers = compare.fit_detectors(
    train_f, y_train, families=names, probe_family=probe, settings=settings, seed=config.seed,
    validation=(calib_f, y_calib) if d.early_stopping else None,
  )  # fmt: skip
  table = compare.compare(
    scorers, calib_f, y_calib, test_f, y_test, n_boot=d.bootstrap, seed=config.seed
  )
  result = _report(workdir, table, scorers, (train_f, calib_f, test_f))
  jaxpost_workdir.release(workdir)
  return result


def _frozen_model(config, workdir):
  if config.train.init_from:
    from jaxpost.data import generated

    model, tok, _ = generated.load_run(config.train.init_from)
    return model, tok
  tok = common.load_tokenizer(config, workdir)
  return common.build_model(config, tok.vocab_size), tok


def _answers(config, model, tok, levels: str, out: str, samples=None, temperature=None):
  from jaxpost.data import generated

  d = config.detect
  counts = generated.generate_dataset(
    model,
    tok,
    config_lib.parse_levels(levels),
    d.questions,
    out,
    seed=config.seed,
    samples=d.samples if samples is None else samples,
    temperature=d.temperature if temperature is None else temperature,
    max_new_tokens=d.max_new_tokens,
    batch_size=d.batch_size,
  )
  logging.info("answers %s: %s", os.path.basename(out), counts)
  return features.read_records(out)


def _semantic(config, model, tok, levels: str, workdir: str) -> dict | None:
  """{question index: -semantic entropy} from ``detect.se_samples`` sampled answers per
  question (clustered by their final answer), or None when off."""
  d = config.detect
  if not d.se_samples:
    return None
  out = os.path.join(workdir, "sampled_answers.jsonl")
  sampled = _answers(config, model, tok, levels, out, d.se_samples, d.se_temperature)
  finals: dict[int, list[str]] = {}
  for r in sampled:
    answer = template.parse_response(r["response"]).answer.strip()
    finals.setdefault(int(r["index"]), []).append(answer)
  keys = sorted(finals)
  return dict(zip(keys, baselines.semantic_entropy([finals[k] for k in keys]), strict=True))


def _extract(model, tok, records, layers, d, out: str, semantic=None, mesh=None) -> None:
  got = features.extract(model, tok, records, layers=layers, batch_size=d.batch_size, mesh=mesh)
  got["question"] = np.asarray([_question_id(r) for r in records], np.int64)
  if semantic is not None:  # a question with no sampled answer left (all empty): 0
    got["semantic"] = np.asarray([[semantic.get(int(q), 0.0)] for q in got["question"]], np.float32)
  meta = {"layers": list(layers), "records": len(records), "levels": features.level_names(records)}
  features.write(got, out, meta=meta)


def _stored(directory: str) -> dict:
  """A features dir with each answer's level by name (ids differ between dirs)."""
  try:
    f, info = features.read(directory)
  except (FileNotFoundError, ValueError) as e:
    raise config_lib.ConfigError(str(e)) from None
  f["level"] = features.answer_levels(f, info)
  return f


def _question_id(record) -> int:
  """Answers to one question share it (a split never puts a question on both sides)."""
  if "index" in record:
    return int(record["index"])
  text = record.get("question", record.get("prompt", ""))
  return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=7).digest(), "little")


def _questions(f: dict) -> np.ndarray:
  return f.get("question", f["index"])


def _held_out(questions: np.ndarray, fraction: float, rng, labels=None) -> np.ndarray:
  """A ``fraction`` of the distinct question ids (a question's answers stay together).
  With ``labels``, that fraction of each class's questions (a question's class: its
  first answer's label), at least one of each where a class has two or more: held-apart
  answers that hold both outcomes even when one is rare (a strong model, 10% labels)."""
  if labels is None:
    groups = [np.unique(questions)]
  else:
    first = {}
    for q, y in zip(questions.tolist(), np.asarray(labels).tolist(), strict=True):
      first.setdefault(q, y)
    groups = [np.asarray(sorted(q for q, y in first.items() if y == c)) for c in (0, 1)]
  total = sum(len(g) for g in groups)
  held = []
  for group in groups:
    n = min(len(group) - 1, max(1, int(round(fraction * len(group)))))
    if n >= 1:
      held.append(rng.choice(group, size=n, replace=False))
  if not held:
    raise config_lib.ConfigError(f"{total} question(s): too few to hold any out")
  return np.concatenate(held)


def _rows(f: dict, keep: np.ndarray) -> dict:
  return {k: v[keep] for k, v in f.items()}


def _split(train_f, test_f, d, seed: int):
  """(fit, calibration, test) answers (module doc). The test answers come from
  ``test_f`` when given (another model's), else from ``train_f``; either way no test
  question (or, with ``test_levels``, no test level) is among the training answers."""
  rng = np.random.default_rng([seed, 0x5E7])
  source = train_f if test_f is None else test_f
  if d.test_levels:
    levels = [x.split(":")[0].strip() for x in d.test_levels.split(",") if x.strip()]
    is_test, is_train = np.isin(source["level"], levels), ~np.isin(train_f["level"], levels)
    if not is_test.any() or not is_train.any():
      side = "test" if not is_test.any() else "training"
      found = sorted({str(x) for x in (*source["level"], *train_f["level"])})
      raise config_lib.ConfigError(
        f"detect.test_levels={d.test_levels!r} leaves no {side} answer; the answers' levels: "
        f"{found}"
      )
  else:
    all_questions = np.concatenate([_questions(train_f), _questions(source)])
    held = _held_out(all_questions, d.test_fraction, rng)
    is_test, is_train = np.isin(_questions(source), held), ~np.isin(_questions(train_f), held)
  train_f, test_f = _rows(train_f, is_train & (train_f["label"] >= 0)), _rows(source, is_test)
  test_f = _rows(test_f, test_f["label"] >= 0)
  if d.label_fraction < 1.0:
    n = len(train_f["label"])
    keep = rng.permutation(n)[: max(4, int(d.label_fraction * n))]
    train_f = _rows(train_f, np.isin(np.arange(n), keep))
  calib = _held_out(_questions(train_f), d.calibration_fraction, rng, train_f["label"])
  is_calib = np.isin(_questions(train_f), calib)
  return _rows(train_f, ~is_calib), _rows(train_f, is_calib), test_f


def _family_names(d, f: dict) -> list[str]:
  names = []
  for kind in (k.strip() for k in d.families.split(",") if k.strip()):
    if kind in ("tokens", "instability"):
      names.append(kind)
    else:
      names += sorted(n for n in f if n.startswith(kind + ".L"))
  missing = [n for n in names if n not in f]
  if missing or not names:
    raise config_lib.ConfigError(f"the features lack {missing or d.families}")
  return names


def _first_layer_family(kind: str, f: dict) -> str:
  found = sorted(n for n in f if n.startswith(kind + ".L"))
  if not found:
    raise config_lib.ConfigError(f"detect.probe={kind!r}: the features have no {kind}.L* family")
  return found[0]


def _report(workdir, table, scorers, splits) -> dict:
  md = compare.to_markdown(table)
  counts = "; ".join(
    f"{name} answers: {len(f['label'])} ({int(np.sum(f['label']))} correct)"
    for name, f in zip(("training", "calibration", "test"), splits, strict=True)
  )
  with open(os.path.join(workdir, "results.md"), "w", encoding="utf-8") as f:
    f.write(f"{counts}.\n\n{md}")
  as_json = {
    name: {m: vars(v) for m, v in row.items()} for name, row in table.items()
  }  # fmt: skip
  with open(os.path.join(workdir, "results.json"), "w", encoding="utf-8") as f:
    json.dump(as_json, f, indent=2)
  plot = _plots(workdir, scorers, splits[1], splits[2])
  logging.info("detection results:\n%s", md)
  result = {"step": 0, "plot": plot, "metrics_path": os.path.join(workdir, "results.json")}
  record = {"step": 0}  # metrics.jsonl: what the sweep harness reports from a run
  for name, row in table.items():
    result[f"detect/{name}/auroc"] = row["auroc"].value
    record.update({f"detect/{name}/{m}": v.value for m, v in row.items()})
  with open(os.path.join(workdir, "metrics.jsonl"), "w", encoding="utf-8") as f:
    f.write(json.dumps(record) + "\n")
  return result


def _plots(workdir, scorers, calib_f, test_f) -> str:
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  y_test = test_f["label"]
  fig, (roc, rel) = plt.subplots(1, 2, figsize=(11, 4.5))
  for name, scorer in scorers.items():
    s = np.asarray(scorer(test_f), np.float64)
    order = np.argsort(-s)
    tp = np.cumsum(y_test[order] == 1) / max(1, np.sum(y_test == 1))
    fp = np.cumsum(y_test[order] == 0) / max(1, np.sum(y_test == 0))
    roc.plot(np.r_[0, fp], np.r_[0, tp], label=name, lw=2 if name == "flag" else 1)
    if name in ("flag", "linear_probe", "max_sequence_probability"):
      p = compare.calibrator(np.asarray(scorer(calib_f)), calib_f["label"])(s)
      bins = np.minimum((p * 10).astype(int), 9)
      xs = [p[bins == b].mean() for b in range(10) if np.any(bins == b)]
      ys = [y_test[bins == b].mean() for b in range(10) if np.any(bins == b)]
      rel.plot(xs, ys, "o-", label=name)
  roc.plot([0, 1], [0, 1], "k:", lw=0.8)
  roc.set(
    xlabel="false positive rate (hallucinations trusted)",
    ylabel="true positive rate (correct answers trusted)",
    title="ROC, test answers",
  )
  roc.legend(fontsize=7)
  rel.plot([0, 1], [0, 1], "k:", lw=0.8)
  rel.set(xlabel="predicted p(correct) (Platt-calibrated)", ylabel="observed accuracy",
          title="reliability, test answers")  # fmt: skip
  rel.legend(fontsize=7)
  path = os.path.join(workdir, "detection.png")
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)
  return path
