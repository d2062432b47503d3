"""Config sweeps: declare cells x seeds, run each as its own process, report with intervals.

  spec.py     a sweep: base config, cells (grid / zipped / explicit), seeds, report settings
  launch.py   runs the cells (local workers, TPU VM, SLURM array), the manifest, resumption
  stats.py    t and bootstrap intervals, paired differences
  report.py   metrics.jsonl of every cell -> results.md / .csv / .json and curve plots

``python -m jaxpost.sweep --config=configs/sweeps/<name>.py --root=DIR`` runs a sweep;
``python -m jaxpost.sweep.report DIR`` writes its tables.
"""

from jaxpost.sweep.spec import Cell, Sweep, cells, grid, load, product, zipped

__all__ = ["Cell", "Sweep", "cells", "grid", "load", "product", "zipped"]
