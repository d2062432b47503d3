"""UDS and the online batch-selection baselines (jaxpost/selection.py) on SFT.

Each step draws ``data.batch_size`` candidate rows (one example per row) and trains on
``select.keep`` of every ``select.pool`` (the paper's script: 1 of each micro-batch of
4), chosen by ``select.name``:

  uds       nuclear norm of the logits + alpha x distance to a FIFO queue of kept rows
  random    a random 1 of 4 (the same trained rows per step, no scoring)
  max_loss  the highest-loss row
  fit       the lowest-loss row within a loss band (fit-based: perplexity thresholds)

Variants ``tiny`` and ``quickstart`` (configs/sft_objectives.py's set-ups) with UDS; a
suffix picks another selector: ``quickstart-random``, ``tiny-max_loss``, ...

  python -m jaxpost.main --config=configs/uds.py:quickstart --workdir=runs/uds
"""

from jaxpost.config_lib import load_sibling

SELECTORS = ("uds", "random", "max_loss", "fit")


def get_config(variant: str = "tiny"):
  base, _, name = variant.partition("-")
  name = name or "uds"
  if base not in ("tiny", "quickstart") or name not in SELECTORS:
    raise ValueError(
      f"unknown variant {variant!r}; expected tiny | quickstart, optionally -{'|-'.join(SELECTORS)}"
    )
  c = load_sibling(__file__, "sft_objectives").get_config(base)
  c.data.pack = False  # the row is the unit scored and kept: one example per row
  c.data.seq_len = 52  # the longest mul2x2 example
  c.data.batch_size = 64  # candidates: 16 rows trained per step
  c.select.name = name
  c.select.pool = 4
  c.select.keep = 1
  return c
