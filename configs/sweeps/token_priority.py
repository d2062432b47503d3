"""Token Priority in practice (issue 19, item 1): positive priority against noisy
supervision, signed priority against an undesirable mode, each against plain SFT on the
same data.

Every cell fine-tunes the zoo's ``rl-start@SEED`` on mul2x2 for 300 steps
(configs/sft_objectives.py:quickstart) on data corrupted by ``data.corrupt``
(jaxpost/data/corrupt.py), whose bad tokens are marked (``ROLE_MARKED``) so that the
``token_priority`` loss can weight exactly them (``marked_weight``):

variant ``noise`` (60% of the traces write the first partial product's last digit off by
one, ``47*6=283``: a systematic annotator error that greedy decoding would learn):
  ce          plain SFT on the noisy data (the baseline)
  drop        positive priority from the flags: marked tokens weigh 0
  selfconf    positive priority from the model's own confidence: tokens with p < 0.2 drop
              (Beyond-LL's threshold as a priority; no flags used)
  clean       plain SFT on clean data (what filtering could at best recover)

variant ``repeat`` (60% of the traces write their first step twice: a looping mode,
``eval/repeats/mul2x2`` counts it in the model's own greedy traces):
  ce          plain SFT on that data (the baseline)
  drop        marked tokens weigh 0 (positive priority: not learned, not unlearned)
  ascent      signed priority: marked tokens weigh -1, gradient ascent on their log p
  unlikelihood  signed priority: -1 through -log(1 - p) (bounded)
  clean       plain SFT on clean data
  ascent_0.1, unlikelihood_0.1   the two signed rows at weight -0.1

  python -m jaxpost.sweep --config=configs/sweeps/token_priority.py:noise \\
    --root=runs/sweeps/token_priority/noise
  python -m jaxpost.sweep.report runs/sweeps/token_priority/noise \\
    --out experiments/token_priority/noise                       # and the same for repeat
"""

from jaxpost.sweep import Sweep, cells

TP = {"loss.name": "token_priority"}
SIGNED = {**TP, "loss.token_priority.priority": "signed", "loss.token_priority.marked_weight": -1.0}
VARIANTS = {
  "noise": (
    "noise:0.6",
    {
      "ce": {},
      "drop": {**TP, "loss.token_priority.marked_weight": 0.0},
      "selfconf": {**TP, "loss.token_priority.min_prob": 0.2},
      "clean": {"data.corrupt": ""},
    },
  ),
  "repeat": (
    "repeat:0.6",
    {
      "ce": {},
      "drop": {**TP, "loss.token_priority.marked_weight": 0.0},
      "ascent": {**SIGNED, "loss.token_priority.negative": "ascent"},
      "unlikelihood": {**SIGNED, "loss.token_priority.negative": "unlikelihood"},
      "clean": {"data.corrupt": ""},
      # added after the first five: a weaker push-down (-0.1) of the same span
      "ascent_0.1": {
        **SIGNED,
        "loss.token_priority.marked_weight": -0.1,
        "loss.token_priority.negative": "ascent",
      },
      "unlikelihood_0.1": {
        **SIGNED,
        "loss.token_priority.marked_weight": -0.1,
        "loss.token_priority.negative": "unlikelihood",
      },
    },
  ),
}


def get_config(variant: str = "noise") -> Sweep:
  if variant not in VARIANTS:
    raise ValueError(f"unknown variant {variant!r}; expected one of {sorted(VARIANTS)}")
  spec, rows = VARIANTS[variant]
  return Sweep(
    base="configs/sft_objectives.py:quickstart",
    cells=cells(*({"name": name, **overrides} for name, overrides in rows.items())),
    seeds=(0, 1, 2),
    fixed={
      "train.init_from": "zoo:rl-start@{seed}",
      "data.corrupt": spec,
      "data.seq_len": 64,  # a repeated step makes the longest trace longer than 52 tokens
      "train.log_every": 10,
      "train.progress": False,
      "eval.final_levels": "add3,mul2x2",
    },
    report={
      "metrics": [
        "eval/accuracy",
        "eval/repeats/mul2x2",
        "eval/accuracy/add3",
        "train/nll:last=5",
        "train/weight_mean:last=5",
      ],
      "baseline": "ce",
      "curves": ["eval/accuracy", "eval/repeats/mul2x2"],
      "scale": 1.0,
    },
  )
