"""The policy losses of the RL recipe side by side, each from the same start per seed.

Every cell runs ``configs/grpo.py:quickstart`` for 80 RL steps from the zoo's
``rl-start@SEED`` (the quickstart stopped at step 700 of 3000, the GRPO demo's start),
with the overrides below, evaluating 200 held-out mul2x2 problems every 20 steps and
logging every step. The first eight cells make one update per sampled batch with
sampler = trainer, so the ratio is exactly 1 and no clip engages; the rest are
off-policy (4 updates per batch, or a top-p sampler).

  python -m jaxpost.sweep --config=configs/sweeps/rl_algorithms.py --report
  python -m jaxpost.sweep.report runs/sweeps/rl_algorithms --out experiments/rl_algorithms
"""

from jaxpost.sweep import Sweep, cells

# Shared by a single-update cell and its off-policy twin.
DAPO = {
  "loss.name": "dapo",
  "rl.dynamic_sampling": True,
  "reward.terms": (("exact_answer", 1.0), ("overlong", 1.0)),
  "reward.overlong.cache_len": 8,  # max_len 0 = the 56-token cap; the ramp is its last 8
}
# 2 epochs x 2 minibatches = 4 optimiser updates per batch at a quarter of the lr (Adam's
# step is about lr whatever the gradient's scale) and 4x the warmup (counted in updates).
MULTI = {"rl.epochs": 2, "rl.minibatches": 2, "optim.lr": 5e-5, "optim.warmup_steps": 40}
TOP_P = {"rl.top_p": 0.9}  # mu = the 0.9 nucleus, so pi_old / mu is not 1
MINPRO = {"loss.grpo.prefix": "min_exclusive"}
TIS = {"loss.grpo.is_level": "token"}

# Every cell: 80 RL steps from rl-start@SEED, evaluated every 20 (configs/sweeps/skill_sd.py too).
FIXED = {
  "train.init_from": "zoo:rl-start@{seed}",
  "train.steps": 80,  # constant lr after warmup: this only sets the end
  "train.max_minutes": 0.0,
  "train.log_every": 1,
  "train.progress": False,
  "eval.every": 20,
  "eval.levels": "mul2x2",
}

VARIANTS = cells(
  {"name": "grpo"},
  {"name": "dr_grpo", "loss.name": "dr_grpo", "rl.advantage": "dr_grpo"},
  {"name": "dapo", **DAPO},
  {"name": "gspo", "loss.name": "gspo"},
  {"name": "gspo_token", "loss.name": "gspo_token"},
  {"name": "ppo", "loss.name": "ppo"},
  {"name": "grpo+tis", **TIS},
  {"name": "grpo+minpro", **MINPRO},
  {"name": "grpo_2x2", "rl.epochs": 2, "rl.minibatches": 2},
  {"name": "grpo_2x2_lr/4", **MULTI},
  {"name": "gspo_2x2", "loss.name": "gspo", **MULTI},
  {"name": "gspo_token_2x2", "loss.name": "gspo_token", **MULTI},
  {"name": "dapo_2x2", **DAPO, **MULTI},
  {"name": "ppo_2x2", "loss.name": "ppo", **MULTI},
  {"name": "grpo+minpro_2x2", **MINPRO, **MULTI},
  {"name": "grpo_top_p0.9", **TOP_P},
  {"name": "grpo+tis_top_p0.9", **TOP_P, **TIS},
)


def get_config(variant: str = "default") -> Sweep:
  if variant != "default":
    raise ValueError(f"unknown variant {variant!r}; expected default")
  return Sweep(
    base="configs/grpo.py:quickstart",
    cells=VARIANTS,
    seeds=(0, 1, 2),
    fixed=FIXED,
    report={
      "metrics": [
        "eval/accuracy",
        "eval/accuracy:max",
        "reward/exact_answer:last=10",
        "train/clip_frac_low:mean",
        "train/ratio_mean:mean",
      ],
      "baseline": "grpo",
      "curves": ["eval/accuracy", "reward/exact_answer"],
      "scale": 1.0,
    },
  )
