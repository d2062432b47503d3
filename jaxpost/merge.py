"""Command line: ``python -m jaxpost.merge --config=configs/merge.py:tiny --out=DIR``
(``jaxpost.merging.cli``); dotted overrides as in ``jaxpost.main``
(``--config.merge.method=dare``)."""

from __future__ import annotations

import sys

from absl import app, flags
from ml_collections import config_flags

from jaxpost.merging import cli

_CONFIG = config_flags.DEFINE_config_file("config", None, "e.g. configs/merge.py:tiny")
_OUT = flags.DEFINE_string("out", None, "directory to write (a run, or HF with merge.format=hf)")
flags.mark_flags_as_required(["config", "out"])


def main(argv) -> None:
  del argv
  try:
    out = cli.run(_CONFIG.value.merge, _OUT.value)
  except ValueError as e:
    print(f"jaxpost.merge: {e}", file=sys.stderr, flush=True)
    sys.exit(2)
  print(out)


if __name__ == "__main__":
  app.run(main)
