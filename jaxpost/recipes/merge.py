"""Merge models, then evaluate the merge like a run (``recipe=merge``), top to bottom.

    merge     ``merge.models`` (runs, ``zoo:`` models or Hugging Face directories) by
              ``merge.method`` against ``merge.base`` (``jaxpost.merging.cli``: LoRA runs
              folded in first, tied heads / padded vocabularies explicit)
    run       the merged parameters become this workdir's step-0 checkpoint, so the
              workdir is an ordinary run: ``train.init_from`` / ``load_run`` / the zoo
              read it, ``train.export_hf`` writes ``hf/``, the tokenizer is the first
              source's
    evaluate  held-out accuracy on the config's eval levels, as any run's final
              evaluation (metrics.jsonl), so a sweep compares merges with trained
              models cell by cell

The config's ``model`` section describes the sources' architecture, as for
``train.init_from`` (HF sources: ``model.hf_dir`` = one of them, for its tokenizer and
shapes). Nothing is trained. ``python -m jaxpost.merge --out=DIR`` is the same merge
without the evaluation, writing a run or an HF directory.
"""

from __future__ import annotations

import os
import shutil
import tempfile

from ml_collections import config_dict

from jaxpost import config_lib, fields
from jaxpost.merging import cli, methods
from jaxpost.recipes import common, register

LOSS_FAMILIES = ()  # nothing is trained
DEFAULT_LOSS = None


def config_sections(c: config_dict.ConfigDict) -> None:
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
  m.format = "run"  # python -m jaxpost.merge only: run | hf
  fields.declare(
    "merge",
    models=fields.TEXT,
    base=fields.TEXT,
    method=fields.one_of(methods.METHODS),
    weights=fields.Custom("a tuple of numbers, one per model", _check_weights),
    scale=fields.num(),
    density=fields.num(gt=0, le=1),
    outliers=fields.num(ge=0, lt=1),
    dare_then=fields.one_of(("linear", "ties")),
    t=fields.num(ge=0, le=1),
    w=fields.num(ge=0, le=1),
    v=fields.num(ge=0, le=1),
    seed=fields.integer(ge=0),
    vocab=fields.one_of(("error", "shortest")),
    untie=fields.FLAG,
    format=fields.one_of(cli.FORMATS),
  )


def _check_weights(value) -> None:
  if not isinstance(value, tuple) or any(not isinstance(w, int | float) for w in value):
    raise ValueError("expected a tuple of numbers")


def validate(c: config_dict.ConfigDict) -> None:
  if "merge" not in c:
    raise config_lib.ConfigError("recipe=merge needs its section: start from configs/merge.py")
  models = [r for r in c.merge.models.split(",") if r.strip()]
  if not models:
    raise config_lib.ConfigError("merge.models is empty: the runs / zoo models to merge")
  if c.merge.weights and len(c.merge.weights) != len(models):
    raise config_lib.ConfigError(
      f"merge.weights has {len(c.merge.weights)} entries for {len(models)} models"
    )
  if c.train.init_from:
    raise config_lib.ConfigError("recipe=merge starts from merge.models, not train.init_from")


@register("merge")
def run(config, workdir: str) -> dict:
  """Merges per ``config.merge`` into ``workdir`` and evaluates; returns the summary."""
  mesh = common.validate_and_start(config, workdir, "merge")
  own = os.path.join(workdir, "checkpoints")
  done = os.path.isdir(own) and os.listdir(own)  # resumed: the merge is this run's checkpoint
  with tempfile.TemporaryDirectory(dir=workdir, prefix="merging.") as tmp:
    c = config.copy_and_resolve_references()
    if not done:
      cli.run(config.merge, os.path.join(tmp, "merged"))
      c.train.init_from = os.path.join(tmp, "merged")
      tok = common.load_tokenizer(c, workdir)
      if not (c.tokenizer.path or c.model.hf_dir or c.model.gguf):  # the run's own copy
        shutil.copyfile(common.run_tokenizer(c.train.init_from), _tokenizer_file(workdir))
    else:
      tok = common.load_tokenizer(c, workdir)
    run_ = common.setup(c, workdir, mesh, tok, total_updates=1)
  return common.finish(run_, 0, {}, {}, extra={"merged_from": config.merge.models})


def _tokenizer_file(workdir: str) -> str:
  from jaxpost.data import pipeline

  return os.path.join(workdir, pipeline.TOKENIZER_PREFIX + ".model")
