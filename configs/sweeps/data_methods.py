"""Data-centric methods against SFT with the same training budget (issue 20), 3 seeds.

Every cell fine-tunes the zoo's ``rl-start@SEED`` (~55% held-out mul2x2) on mul2x2 for
300 steps at lr 5e-4 (configs/sft_objectives.py:quickstart), evaluating 200 held-out
problems every 100 steps and add3, mul2x2, mul3x2 at the end.

``s3ft`` variant: SFT on datasets built first, by ``jaxpost.datagen.selective`` from
the cell's own start, on the same 1600 training problems (seed 1234), 16 per step:

  for s in 0 1 2; do for m in s3ft ssr; do python -m jaxpost.datagen.selective \\
    --method=$m --model=zoo:rl-start@$s --levels=mul2x2 --n=1600 --seed=1234 \\
    --out=runs/sweeps/s3ft/data/$m-rl-start@$s; done
    python -m jaxpost.datagen.selective --method=ssr --judge=never --model=zoo:rl-start@$s \\
    --levels=mul2x2 --n=1600 --seed=1234 --out=runs/sweeps/s3ft/data/gold-rl-start@$s; done
  python -m jaxpost.sweep --config=configs/sweeps/data_methods.py:s3ft --root=runs/sweeps/s3ft

  sft    the gold responses (the judge never accepts: the same path, SFT's data)
  ssr    the start's own answer where the task's checker accepts it, else the gold
  s3ft   ssr, plus the start's paraphrase of the gold where it is correct

``s3ft_smollm2``: S3FT and critique fine-tuning against SFT on SmolLM2-135M-Instruct
(configs/s3ft.py:smollm2, 60 steps of 8), 128 add3 problems per seed asked "What is X?",
the lenient judge (the last number); CFT (configs/critique_ft.py:smollm2) trains on
critiques of the model's own T 0.7 answers: root ``runs/sweeps/s3ft_smollm2``, data first:

  for s in 0 1 2; do python -m jaxpost.datagen.selective --method=s3ft --judge=number \\
    --ask='What is {prompt}?' --model=smollm2 --levels=add3 --n=128 --seed=$s \\
    --max_new_tokens=64 --batch_size=32 --out=runs/sweeps/s3ft_smollm2/data/s3ft-seed$s
    python -m jaxpost.datagen.selective --method=ssr --judge=never --ask='What is {prompt}?' \\
    --model=smollm2 --levels=add3 --n=128 --seed=$s --max_new_tokens=8 --batch_size=32 \\
    --out=runs/sweeps/s3ft_smollm2/data/gold-seed$s
    python -m jaxpost.datagen.critique --teacher=number --ask='What is {prompt}?' \\
    --model=smollm2 --levels=add3 --n=128 --seed=$s --max_new_tokens=64 --batch_size=32 \\
    --out=runs/sweeps/s3ft_smollm2/data/cft-seed$s; done

``self_distill`` variant: the start cut to its first block (of 2) and fine-tuned, on the
gold data (``sft_pruned``) or on data its unpruned self wrote (``self_distill``: its own
greedy answer where correct, else the gold; the tiny models cannot read a prompt that
shows them the gold, hence ``--rewrite=none``), against the uncut start on the gold data
(``sft_full``); the data of the ``s3ft`` variant's root plus

  for s in 0 1 2; do python -m jaxpost.datagen.selective --method=self_distill \\
    --rewrite=none --model=zoo:rl-start@$s --levels=mul2x2 --n=1600 --seed=1234 \\
    --out=runs/sweeps/s3ft/data/self_distill-rl-start@$s; done
  python -m jaxpost.sweep --config=configs/sweeps/data_methods.py:self_distill \\
    --root=runs/sweeps/self_distill

``self_distill_long``: the two pruned cells for 1500 steps at lr 2e-3 (at 300 steps of
5e-4 the cut model is still at ~0.5%), root ``runs/sweeps/self_distill_long``.

``self_distill_smollm2``: the same on SmolLM2-135M-Instruct without blocks 13-18 of 30
(configs/self_distill.py:smollm2, 60 steps of 8, add3 asked "What is X?"): the pruned
model on the gold (``sft_pruned``; the s3ft_smollm2 gold files) or on the unpruned
model's rewrites of it where their last number is right (``self_distill``); root
``runs/sweeps/self_distill_smollm2``, data first:

  for s in 0 1 2; do python -m jaxpost.datagen.selective --method=self_distill \\
    --judge=number --ask='What is {prompt}?' --model=smollm2 --levels=add3 --n=128 \\
    --seed=$s --max_new_tokens=64 --batch_size=32 \\
    --out=runs/sweeps/self_distill_smollm2/data/self_distill-seed$s
    cp -r runs/sweeps/s3ft_smollm2/data/gold-seed$s runs/sweeps/self_distill_smollm2/data/
  done

``dmt1`` / ``dmt2`` variants: DMT against sequential and multi-task training, mul2x2 as
the specialised data and expr2 + add5 (new to the start) as the general data, 1600
problems each, the same data for every seed:

  for k in 0 0.0625; do python -m jaxpost.datagen.mixture --spec=mul2x2:1.0 \\
    --general=expr2:1.0,add5:1.0 --n_spec=1600 --n_general=1600 --k=$k \\
    --out=runs/sweeps/dmt/data/k$k; done
  python -m jaxpost.sweep --config=configs/sweeps/data_methods.py:dmt1 --root=runs/sweeps/dmt1
  python -m jaxpost.sweep --config=configs/sweeps/data_methods.py:dmt2 --root=runs/sweeps/dmt2

  dmt1  stage1 (300 steps on D_spec) and multitask (600 steps on D_spec ∪ D_general)
  dmt2  from each seed's stage1: sequential (300 steps on D_general) and dmt (on
        D_general ∪ a stratified 1/16 of D_spec: 100 examples)

``aft`` variant: aggregation fine-tuning against SFT on the same 1600 problems; the AFT
data holds 4 of the start's own samples at T 0.7 per problem in the prompt (compact
layout) and the gold as the target; both evaluate greedy single answers during the run,
then ``experiments/data_methods/aft_eval.py`` adds propose-and-aggregate inference:

  for s in 0 1 2; do python -m jaxpost.datagen.aggregate --model=zoo:rl-start@$s \\
    --levels=mul2x2 --n=1600 --seed=1234 --proposals=4 \\
    --out=runs/sweeps/s3ft/data/aft-rl-start@$s; done
  python -m jaxpost.sweep --config=configs/sweeps/data_methods.py:aft --root=runs/sweeps/aft

``uds`` variant: online batch selection, 16 rows trained per step; the selecting cells
draw 64 candidates per step and keep 1 of every 4 (configs/uds.py):

  sft       16 rows per step, all trained (no selection)
  random    a random 1 of 4
  max_loss  the highest-loss 1 of 4
  fit       the lowest-loss 1 of 4 with token-mean NLL in [0.05, 2.0]
  uds       UDS (nuclear norm + 2.5e-3 x queue distance, queue 1024)

``cycle`` variant: Cycle-Instruct (configs/cycle_instruct.py:quickstart: an adapter pair
on ``rl-start@SEED``, 512 unpaired questions + 512 answers of mul2x2, 2 cycles of 100
steps per model); held-out mul2x2 of

  gold   ALL-SFT: a fresh adapter, 200 steps on the 512 answers with their true questions
  cycle  the same 200 steps on the last cycle's (pseudo question -> real answer) pairs
  filt   cycle after Cycle-Filt (ceil 5% farthest reconstructions per cluster dropped)
  qa     the last question -> answer adapter itself (2 x 100 steps on pseudo pairs)

``adp`` variant: the agent-data protocol's loss on agent turns only. The 1500 tool-use
records of configs/data/tir_sft.jsonl, trained as they are (``raw``: the tool's output
fence is a loss target) or converted to ADP and rendered back in jaxpost's rollout layout
(``adp``: the same text, the output read but not trained on); configs/simpletir.py:sft
for 600 steps, greedy tool rollouts on mul3x3 and mul4x3; root ``runs/sweeps/adp``:

  python -m jaxpost.data.adp --from_tir=configs/data/tir_sft.jsonl \\
    --out=runs/sweeps/adp/data/adp_tir_1500.jsonl
  python -m jaxpost.sweep --config=configs/sweeps/data_methods.py:adp --root=runs/sweeps/adp

``cycle_smollm2``: the same on SmolLM2-135M-Instruct (configs/cycle_instruct.py:smollm2:
64 + 64 add3 paragraphs, 1 cycle of 20 steps per adapter, 40 final steps), cells gold
and cycle, root ``runs/sweeps/cycle_smollm2``.
"""

from jaxpost.sweep import Sweep, cells

DATA = "{root}/data/%s-rl-start@{seed}/data.jsonl"
FILES = {"sft": "gold", "ssr": "ssr", "s3ft": "s3ft"}  # cell -> dataset built for it
COMMON = {
  "train.init_from": "zoo:rl-start@{seed}",
  "train.log_every": 10,
  "train.progress": False,
  "eval.num_examples": 200,
}


def _s3ft() -> Sweep:
  jsonl = {"data.source": "jsonl", "data.batch_size": 16, "data.pack": False, "data.seq_len": 52}
  return Sweep(
    base="configs/s3ft.py:quickstart",
    cells=cells(
      *({"name": m, **jsonl, "data.path": DATA % f} for m, f in FILES.items()),
    ),
    seeds=(0, 1, 2),
    fixed=COMMON,
    report=_report("sft"),
  )


def _self_distill(long: bool = False) -> Sweep:
  jsonl = {"data.batch_size": 16, "data.pack": False, "data.seq_len": 52}
  data = "{root}/../s3ft/data/%s-rl-start@{seed}/data.jsonl"
  chosen = [
    {"name": "sft_pruned", **jsonl, "data.path": data % "gold"},
    {"name": "self_distill", **jsonl, "data.path": data % "self_distill"},
  ]
  fixed = dict(COMMON)
  if long:  # the cut model recovers slowly: 5x the steps at the from-scratch rate
    fixed.update({"train.steps": 1500, "optim.lr": 2e-3, "eval.every": 500})
  else:
    chosen.append(
      {"name": "sft_full", **jsonl, "data.path": data % "gold", "model.keep_layers": ""}
    )
  return Sweep(
    base="configs/self_distill.py:quickstart",
    cells=cells(*chosen),
    seeds=(0, 1, 2),
    fixed=fixed,
    report=_report("sft_pruned"),
  )


def _aft() -> Sweep:
  data = "{root}/../s3ft/data/%s-rl-start@{seed}/data.jsonl"
  rows = {"data.batch_size": 16, "data.pack": False}
  return Sweep(
    base="configs/aft.py:quickstart",
    cells=cells(
      {"name": "sft", **rows, "data.seq_len": 52, "data.path": data % "gold"},
      {
        "name": "aft",
        **rows,
        "data.seq_len": 320,
        "model.max_seq_len": 320,
        "data.path": data % "aft",
      },
    ),
    seeds=(0, 1, 2),
    fixed=COMMON,
    report=_report("sft"),
  )


DMT_DATA = "{root}/../dmt/data/k%s/%s/data.jsonl"
DMT_FIXED = {**COMMON, "data.batch_size": 16, "data.pack": False, "data.seq_len": 96}  # add5: ~70


def _dmt1() -> Sweep:
  return Sweep(
    base="configs/dmt.py:quickstart",
    cells=cells(
      {"name": "stage1", "data.path": DMT_DATA % ("0", "stage1")},
      {"name": "multitask", "data.path": DMT_DATA % ("0", "multitask"), "train.steps": 600},
    ),
    seeds=(0, 1, 2),
    fixed=DMT_FIXED,
    report={**_report("stage1"), "metrics": _DMT_METRICS},
  )


def _dmt2() -> Sweep:
  start = {"train.init_from": "{root}/../dmt1/runs/stage1/seed{seed}"}
  return Sweep(
    base="configs/dmt.py:quickstart-stage2",
    cells=cells(
      {"name": "sequential", **start, "data.path": DMT_DATA % ("0", "stage2")},
      {"name": "dmt", **start, "data.path": DMT_DATA % ("0.0625", "stage2")},
    ),
    seeds=(0, 1, 2),
    fixed=DMT_FIXED,
    report={**_report("sequential"), "metrics": _DMT_METRICS},
  )


_DMT_METRICS = [
  "eval/accuracy/mul2x2",
  "eval/accuracy/expr2",
  "eval/accuracy/add5",
  "eval/accuracy/add3",
]


def _uds() -> Sweep:
  select = [{"name": n, "select.name": n} for n in ("random", "max_loss", "fit", "uds")]
  return Sweep(
    base="configs/uds.py:quickstart",
    cells=cells(
      {"name": "sft", "select.name": "", "data.batch_size": 16},
      *select,
    ),
    seeds=(0, 1, 2),
    fixed={**COMMON, "select.fit.min_nll": 0.05, "select.fit.max_nll": 2.0},
    report=_report("sft"),
  )


def _cycle() -> Sweep:
  finals = {"gold": "gold", "cycle": "retrain", "filt": "retrain", "qa": "qa"}
  return Sweep(
    base="configs/cycle_instruct.py:quickstart",
    cells=cells(
      *(
        {"name": name, "cycle.final": final, "cycle.filter_frac": 0.05 if name == "filt" else 0.0}
        for name, final in finals.items()
      )
    ),
    seeds=(0, 1, 2),
    fixed={**COMMON, "eval.every": 0, "eval.final_levels": "mul2x2,add3"},
    report={
      **_report("gold"),
      "metrics": [
        "eval/accuracy/mul2x2",
        "cycle/questions_exact_c2",
        "cycle/answers_correct_c2",
        "cycle/generated_tokens",
        "cycle/generation_seconds",
        "cycle/final_pairs",
      ],
      "curves": [],
    },
  )


def _smollm2_data(base: str, *named: dict) -> Sweep:
  """SmolLM2 cells on each seed's built data (``{root}/data/<data>-seed<seed>``: a cell's
  ``data`` key), 3 seeds, against the first cell; add3 exact and by the last number."""
  data = "{root}/data/%s-seed{seed}/data.jsonl"
  return Sweep(
    base=base,
    cells=cells(
      *(
        {**{k: v for k, v in c.items() if k != "data"}, "data.path": data % c["data"]}
        for c in named
      )
    ),  # fmt: skip
    seeds=(0, 1, 2),
    fixed={"train.log_every": 5, "train.progress": False, "eval.num_examples": 64},
    report={
      "metrics": ["eval/accuracy/add3", "eval/last_number/add3", "train/loss:last=1"],
      "baseline": named[0]["name"],
      "curves": [],
      "scale": 1.0,
    },
  )


def _s3ft_smollm2() -> Sweep:
  return _smollm2_data(
    "configs/s3ft.py:smollm2",
    {"name": "sft", "data": "gold"},
    {"name": "s3ft", "data": "s3ft"},
    # critique rows are ~2x longer than SFT rows: twice the row, the same examples a step
    {"name": "cft", "data": "cft", "data.seq_len": 320, "model.max_seq_len": 320},
  )


def _cycle_smollm2() -> Sweep:
  return Sweep(
    base="configs/cycle_instruct.py:smollm2",
    cells=cells({"name": "gold", "cycle.final": "gold"}, {"name": "cycle"}),
    seeds=(0, 1, 2),
    fixed={"train.log_every": 5, "eval.levels": "add3"},
    report={
      "metrics": [
        "eval/accuracy/add3",
        "eval/last_number/add3",
        "cycle/answers_correct_c1",
        "cycle/questions_exact_c1",
        "cycle/generated_tokens",
        "cycle/generation_seconds",
      ],
      "baseline": "gold",
      "curves": [],
      "scale": 1.0,
    },
  )


def _self_distill_smollm2() -> Sweep:
  return _smollm2_data(
    "configs/self_distill.py:smollm2",
    {"name": "sft_pruned", "data": "gold"},
    {"name": "self_distill", "data": "self_distill"},
  )


def _adp() -> Sweep:
  return Sweep(
    base="configs/adp.py:rollout",
    cells=cells(
      {"name": "raw", "data.source": "jsonl", "data.path": "configs/data/tir_sft.jsonl"},
      {"name": "adp", "data.path": "{root}/data/adp_tir_1500.jsonl"},
    ),
    seeds=(0, 1, 2),
    fixed={"train.steps": 600, "eval.every": 200, "train.progress": False},
    report={
      "metrics": ["eval/accuracy", "eval/accuracy/mul3x3", "eval/accuracy/mul4x3"],
      "baseline": "raw",
      "curves": ["eval/accuracy"],
      "scale": 1.0,
    },
  )


def _report(baseline: str) -> dict:
  return {
    "metrics": [
      "eval/accuracy",
      "eval/accuracy/add3",
      "eval/accuracy/mul3x2",
      "train/loss:last=1",
    ],
    "baseline": baseline,
    "curves": ["eval/accuracy"],
    "scale": 1.0,
  }


def get_config(variant: str = "s3ft") -> Sweep:
  if variant == "s3ft":
    return _s3ft()
  if variant == "uds":
    return _uds()
  if variant == "self_distill":
    return _self_distill()
  if variant == "self_distill_long":
    return _self_distill(long=True)
  if variant == "aft":
    return _aft()
  if variant == "dmt1":
    return _dmt1()
  if variant == "dmt2":
    return _dmt2()
  if variant == "cycle":
    return _cycle()
  if variant == "cycle_smollm2":
    return _cycle_smollm2()
  if variant == "s3ft_smollm2":
    return _s3ft_smollm2()
  if variant == "adp":
    return _adp()
  if variant == "self_distill_smollm2":
    return _self_distill_smollm2()
  raise ValueError(
    f"unknown variant {variant!r}; expected s3ft | self_distill | self_distill_long | aft | "
    "dmt1 | dmt2 | uds | cycle | cycle_smollm2 | s3ft_smollm2 | adp | self_distill_smollm2"
  )
