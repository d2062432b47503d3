"""Command line: ``python -m jaxpost.main --config=configs/sft.py:tiny --workdir=DIR``.

Dotted overrides (``--config.optim.lr=3e-4``) are type-checked by ml_collections and
unknown keys are rejected before any work starts; the recipe then checks values
(``config_lib.validate``, once) before it touches the workdir. Re-running with the same
workdir resumes from its latest checkpoint.
"""

from __future__ import annotations

import json
import logging as std_logging

import jax
from absl import app, flags, logging
from ml_collections import config_flags

from jaxpost import config_lib, recipes

_CONFIG = config_flags.DEFINE_config_file("config", None, "config file, e.g. configs/sft.py:tiny")
_WORKDIR = flags.DEFINE_string("workdir", None, "output directory (resumes if it has checkpoints)")
flags.mark_flags_as_required(["config", "workdir"])


class _QuietLibraries(std_logging.Filter):
  """Drops INFO chatter from Orbax (it logs every save step through absl)."""

  def filter(self, record) -> bool:
    return record.levelno >= std_logging.WARNING or "orbax" not in record.pathname


def main(argv) -> None:
  logging.get_absl_handler().addFilter(_QuietLibraries())
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  config = _CONFIG.value
  logging.info("config:\n%s", config)
  logging.info("workdir: %s", _WORKDIR.value)
  try:
    recipe = recipes.get(config.recipe)
  except KeyError as e:
    raise app.UsageError(f"invalid config: recipe: {e}") from None
  try:
    # The recipe validates the config (once) before it touches the workdir.
    result = recipe.run(config, _WORKDIR.value)
  except config_lib.ConfigError as e:
    raise app.UsageError(f"invalid config: {e}") from None
  if jax.process_index() == 0:  # multi-host: one summary
    print(summary(result))


def summary(result: dict) -> str:
  """A human-readable end-of-run report, then the raw numbers as JSON."""
  from jaxpost.data import tasks

  lines = [f"finished at step {result.get('step')} in {result.get('wall_minutes', 0):.1f} min"]
  trained = result.get("headline_levels", [])
  if "eval/accuracy" in result:
    lines.append(
      f"held-out exact-match accuracy: {100 * result['eval/accuracy']:.1f}% "
      f"(mean over {', '.join(trained) or 'the evaluated levels'})"
    )
  acc = {k.split("/")[-1]: v for k, v in result.items() if k.startswith("eval/accuracy/")}
  if acc:
    lines.append("by level:")
    for level, a in acc.items():
      diff = getattr(tasks.LEVELS.get(level), "difficulty", "")
      note = "trained" if level in trained else ""
      lines.append(f"  {level:<8} {diff:<7} {100 * a:6.1f}%  {note}".rstrip())
  for key in ("plot", "metrics_path", "tensorboard_dir", "hf_dir"):
    if key in result:
      lines.append(f"{key}: {result[key]}")
  numbers = {k: v for k, v in result.items() if isinstance(v, int | float)}
  lines.append(json.dumps(numbers))
  return "\n".join(lines)


if __name__ == "__main__":
  app.run(main)
