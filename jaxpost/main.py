"""Command line: ``python -m jaxpost.main --config=configs/sft.py:tiny --workdir=DIR``.

Dotted overrides (``--config.optim.lr=3e-4``) are type-checked by ml_collections and
unknown keys are rejected before any work starts; the recipe then checks values
(``config_lib.validate``, once) before it touches the workdir. Re-running with the same
workdir resumes from its latest checkpoint.
"""

from __future__ import annotations

import json
import logging as std_logging
import sys

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


# Exit statuses: bad input (config, data, a workdir in use) is 2, like a usage error; a
# run that started and was stopped by what it computed (NaN, a reward budget) is 1.
EXIT_BAD_INPUT = 2
EXIT_RUN_STOPPED = 1


def _fail(status: int, message: str) -> None:
  """One line on stderr, no traceback, and the exit status."""
  print(f"jaxpost: {message}", file=sys.stderr, flush=True)
  sys.exit(status)


def parse_flags(argv: list[str]) -> list[str]:
  """absl's flag parsing, with a bad ``--config.*`` override as one line and exit 2.

  ml_collections reports an unknown field or section as an AttributeError / KeyError
  traceback; here it names the field and the closest known one.
  """
  try:
    return flags.FLAGS(argv)
  except (flags.Error, AttributeError, KeyError, TypeError, ValueError) as e:
    _fail(EXIT_BAD_INPUT, f"invalid config: {_explain(argv, e)}")


def _explain(argv: list[str], error: Exception) -> str:
  """The first unknown ``--config.<field>`` of ``argv`` (with a suggestion), else the error."""
  spec = next((a.split("=", 1)[1] for a in argv if a.startswith("--config=")), None)
  overrides = [a[len("--config.") :].split("=", 1)[0] for a in argv if a.startswith("--config.")]
  if spec and overrides:
    try:
      c = config_lib.load_config(spec)
      for field in overrides:
        try:
          config_lib.get_field(c, field)
        except config_lib.ConfigError as e:
          return str(e)
    except Exception:  # noqa: BLE001 (the config file itself is broken: say what absl said)
      pass
  lines = [ln.strip() for ln in str(error).strip().splitlines() if ln.strip()]
  if any(ln.startswith("Traceback") for ln in lines):  # a config file that raised
    return f"{lines[0].split(': Error whilst')[0]}: {lines[-1]}"
  return " ".join(lines[:2]) if lines else type(error).__name__


def main(argv) -> None:
  from jaxpost.data.jsonl import DataError
  from jaxpost.recipes.common import NonFiniteError
  from jaxpost.rewards import RewardBudgetError
  from jaxpost.workdir import WorkdirError

  logging.get_absl_handler().addFilter(_QuietLibraries())
  if len(argv) > 1:
    _fail(EXIT_BAD_INPUT, f"unexpected arguments: {argv[1:]}")
  config = _CONFIG.value
  try:
    config.recipe  # noqa: B018 (a config file that failed to load raises on first use)
  except (OSError, AttributeError) as e:
    _fail(EXIT_BAD_INPUT, f"invalid config: --config: {str(e).strip().splitlines()[-1].strip()}")
  logging.info("config:\n%s", config)
  logging.info("workdir: %s", _WORKDIR.value)
  try:
    recipe = recipes.get(config.recipe)
  except KeyError as e:
    _fail(EXIT_BAD_INPUT, f"invalid config: recipe: {str(e).strip(chr(34))}")
  try:
    # The recipe validates the config (once) before it touches the workdir.
    result = recipe.run(config, _WORKDIR.value)
  except config_lib.ConfigError as e:
    _fail(EXIT_BAD_INPUT, f"invalid config: {e}")
  except DataError as e:
    _fail(EXIT_BAD_INPUT, f"bad data: {e}")
  except WorkdirError as e:
    _fail(EXIT_BAD_INPUT, str(e))
  except (NonFiniteError, RewardBudgetError) as e:
    _fail(EXIT_RUN_STOPPED, f"run stopped: {e}")
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
  app.run(main, flags_parser=parse_flags)
