"""Hallucination detection on frozen models: FLaG against every baseline (issue 16).

Per seed s (the seed draws the questions, the split, the label subset and every head's
initialisation and minibatches), each model answers 3000 add3 / mul2x2 questions
greedily (semantic entropy from 5 more sampled answers per question) and its features
are stored once (the extraction cells); the other cells train heads on stored features
only (``detect.features``), reading them through ``{root}``, so the sweep runs with
one worker, cells in order.

Models (the quickstart's size, seed s's run of each; same widths and tokenizer, so a
head trained on one scores another):
  student40  ``student-mul2x2-40@s``   stopped at >= 40% held-out mul2x2 (~350 steps)
  rlstart    ``rl-start@s``            stopped at step 700 (~55%)
  teacher    ``teacher-mul2x2@s``      1500 steps (~94% mul2x2, 100% add3)
  smollm2    ``smollm2-add3-start@s``  SmolLM2-135M-Instruct after ~25 SFT steps on add3
             (~20-30% add3), 600 add3 questions through its chat template, layers 15
             and 30 (the tiny models: their last block)

Cells:
  {model}                  in distribution: heads fitted on the answers to 70% of the
                           questions (less the calibration fifth), tested on the rest
  {model}_labels10         the same with 10% of the training labels
  rlstart_sampled          the detection set is sampled answers (temperature 1), not greedy
  {model}_add3_to_mul2x2   across task family and difficulty: heads on add3 (easy)
  {model}_mul2x2_to_add3   answers only, tested on mul2x2 (medium), and back
  {a}_to_{b}               across models: heads on model a's answers, tested on model
                           b's answers to questions a's heads never saw

On the tiny models only add3 and mul2x2 have both right and wrong answers (add5,
mul3x2 and expr2: 0%), so level transfer is family transfer too; SmolLM2's start is
right on add3 only, and its width differs, so its heads are retrained with the same
hyperparameters (its in-distribution rows) rather than transferred.

Variant ``ablation`` (sweep ``detect_ablation``, beside this one: it reads this sweep's
rlstart features, so run it after or alongside): FLaG's choices on rlstart's features,
K = 1 / 4 / 16 / 64 (64 is the paper's), the pairwise ranking loss, distance energy, and
the token-signal families only (no hidden states).

  python -m jaxpost.sweep --config=configs/sweeps/detect.py --workers=1 --report
  python -m jaxpost.sweep.report runs/sweeps/detect --out experiments/detection
  python -m jaxpost.sweep --config=configs/sweeps/detect.py:ablation --name=detect_ablation \\
      --workers=1 --report
  python -m jaxpost.sweep.report runs/sweeps/detect_ablation --out experiments/detection/ablation
"""

from jaxpost.sweep import Sweep, cells

TINY = {
  "student40": "zoo:student-mul2x2-40@{seed}",
  "rlstart": "zoo:rl-start@{seed}",
  "teacher": "zoo:teacher-mul2x2@{seed}",
}
DETECTORS = "detect/{row}/"
REPORT = {
  "metrics": ["detect/flag/auroc"],
  "matrices": [DETECTORS + m for m in ("auroc", "prr", "ece", "brier")],
  "matrix_baseline": "flag",
}


def _stored(model: str) -> str:
  return "{root}/runs/" + model + "/seed{seed}/features"


def get_config(variant: str = "default") -> Sweep:
  if variant == "ablation":
    return _ablation()
  if variant != "default":
    raise ValueError(f"unknown variant {variant!r}; expected default | ablation")
  extract = [{"name": name, "train.init_from": ref} for name, ref in TINY.items()]
  extract.append({"name": "rlstart_sampled", "train.init_from": TINY["rlstart"],
                  "detect.temperature": 1.0})  # fmt: skip
  extract.append({
    "name": "smollm2",
    "config": "configs/flag.py:smollm2",
    "train.init_from": "zoo:smollm2-add3-start@{seed}",
  })  # fmt: skip
  heads = [
    {"name": f"{m}_labels10", "detect.features": _stored(m), "detect.label_fraction": 0.1}
    for m in (*TINY, "smollm2")
  ]
  for m in ("student40", "rlstart"):  # the teacher is never wrong on add3: no test there
    heads.append({"name": f"{m}_add3_to_mul2x2", "detect.features": _stored(m),
                  "detect.test_levels": "mul2x2"})  # fmt: skip
    heads.append({"name": f"{m}_mul2x2_to_add3", "detect.features": _stored(m),
                  "detect.test_levels": "add3"})  # fmt: skip
  for a, b in (("student40", "teacher"), ("teacher", "student40"), ("student40", "rlstart")):
    heads.append({"name": f"{a}_to_{b}", "detect.features": _stored(a),
                  "detect.test_features": _stored(b)})  # fmt: skip
  for h in heads:  # heads only: no model is loaded
    h["train.init_from"] = ""
    if h["name"].startswith("smollm2"):
      h["config"] = "configs/flag.py:smollm2"
  return Sweep(base="configs/flag.py:tiny", cells=cells(*extract, *heads), seeds=(0, 1, 2),
               report=REPORT)  # fmt: skip


def _ablation() -> Sweep:
  """FLaG's choices on the main sweep's rlstart features (module doc)."""
  features = "{root}/../detect/runs/rlstart/seed{seed}/features"  # the default sweep's
  variants = {
    "flag_k64": {},
    "k1": {"detect.groups": 1},
    "k4": {"detect.groups": 4},
    "k16": {"detect.groups": 16},
    "ranking": {"detect.loss": "ranking"},
    "distance": {"detect.energy": "distance"},
    "no_hidden": {"detect.families": "tokens,instability"},
  }
  heads = [{"name": name, "detect.features": features, "train.init_from": "", **overrides}
           for name, overrides in variants.items()]  # fmt: skip
  # Every cell holds the same baselines (same features and splits): FLaG's rows matter.
  report = {"metrics": [f"detect/flag/{m}" for m in ("auroc", "auprc", "prr", "ece", "brier")],
            "baseline": "flag_k64"}  # fmt: skip
  return Sweep(base="configs/flag.py:tiny", cells=cells(*heads), seeds=(0, 1, 2), report=report)
