"""Model merging (``recipe=merge``, jaxpost/recipes/merge.py): merge, then evaluate.

  python -m jaxpost.main --config=configs/merge.py:tiny --workdir=runs/merged
  python -m jaxpost.merge --config=configs/merge.py:tiny --out=DIR   # merge only (run / hf)

``merge.models`` are runs, ``zoo:`` models or Hugging Face directories; ``merge.base``
is their common start (task vectors are taken against it; linear, slerp and model
soups need none). Methods and their settings: jaxpost/merging/methods.py. The
``model`` section describes the sources (as for ``train.init_from``); the merged model
is evaluated on ``eval.levels``.

Variants:
  ``tiny``     the quickstart's seed-0 run at two budgets (``rl-start``, step 700, and
               ``teacher-mul2x2``, step 1500) merged by TIES against
               ``student-mul2x2-40`` (~350 steps) as the base, evaluated on add3 and
               mul2x2; seconds once the zoo models exist
  ``default``  no sources: set ``merge.models`` (and ``merge.base``)
"""

from jaxpost.config_lib import load_sibling


def get_config(variant: str = "tiny"):
  c = load_sibling(__file__, "base").get_config("merge")
  c.model.size = "tiny"  # the quickstart's models
  c.data.levels = "add3:0.2,mul2x2:1.0"  # what they were trained on: the evaluated levels
  c.eval.max_new_tokens = 96
  c.train.steps = 0  # nothing is trained
  m = c.merge
  if variant == "tiny":
    m.models = "zoo:rl-start,zoo:teacher-mul2x2"
    m.base = "zoo:student-mul2x2-40"
    m.method = "ties"
  elif variant != "default":
    raise ValueError(f"unknown variant {variant!r}; expected tiny | default")
  return c
