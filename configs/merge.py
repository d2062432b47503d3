"""Model merging (``python -m jaxpost.merge --config=configs/merge.py:VARIANT --out=DIR``).

``merge.models`` are runs, ``zoo:`` models or Hugging Face directories; ``merge.base``
is their common start (task vectors are taken against it; linear, slerp and model
soups need none). Methods and their settings: jaxpost/merging/methods.py.

Variants:
  ``tiny``  the quickstart's seed-0 run at two budgets (``rl-start``, step 700, and
            ``teacher-mul2x2``, step 1500) merged by TIES against ``student-mul2x2-40``
            (~350 steps) as the base; seconds once the zoo models exist
"""

from ml_collections import config_dict


def get_config(variant: str = "tiny"):
  c = config_dict.ConfigDict()
  c.merge = config_dict.ConfigDict()
  m = c.merge
  m.models = ""  # comma-separated runs / zoo:NAME[@SEED] / HF directories
  m.base = ""  # their common start ("" for linear, slerp)
  m.method = "linear"  # jaxpost.merging.METHODS: linear, ties, dare, slerp, bai, ...
  m.weights = ()  # per model; () = equal
  m.scale = 1.0  # lambda on the merged task vector
  m.density = 0.2  # ties / dare / breadcrumbs: fraction of each task vector kept
  m.outliers = 0.01  # breadcrumbs: largest fraction dropped
  m.dare_then = "linear"  # dare: then linear sum or ties sign election
  m.t = 0.5  # slerp: 0 = the first model, 1 = the second
  m.w = 0.5  # bai: instruct weight in stage 1
  m.v = 0.5  # bai: stage-1 weight against the base in stage 2
  m.seed = 0  # dare's drop masks
  m.vocab = "error"  # differing vocabulary sizes: error | shortest
  m.untie = False  # give tied-head models their own head when others have one
  m.format = "run"  # run | hf
  if variant == "tiny":
    m.models = "zoo:rl-start,zoo:teacher-mul2x2"
    m.base = "zoo:student-mul2x2-40"
    m.method = "ties"
  elif variant != "default":
    raise ValueError(f"unknown variant {variant!r}; expected tiny | default")
  return c
