"""Config errors fail early with messages naming the field; every field is documented."""

import ast
import io
import os
import re
import subprocess
import sys
import tokenize

import pytest
from ml_collections import config_dict

from jaxpost import config_lib

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BASE = os.path.join(REPO, "configs", "base.py")


def _config(variant="tiny"):
  return config_lib.load_sibling(os.path.join(REPO, "configs", "sft.py"), "sft").get_config(variant)


def _cli(workdir, *overrides):
  return subprocess.run(
    [
      sys.executable,
      "-m",
      "jaxpost.main",
      "--config=configs/sft.py:tiny",
      f"--workdir={workdir}",
      *overrides,
    ],
    cwd=REPO,
    capture_output=True,
    text=True,
    timeout=120,
    env={**os.environ, "JAX_PLATFORMS": "cpu"},
  )


@pytest.mark.parametrize(
  "override, expected",
  [
    ("--config.optim.lrr=1", "unknown config field 'optim.lrr' (did you mean 'optim.lr'?)"),
    ("--config.optimizer.lr=1", "unknown config section 'optimizer' (did you mean 'optim'?)"),
    ("--config.train.steps=abc", "train.steps"),  # wrong type
    ("--config.loss.name=nope", "loss.name='nope': must be one of"),
    ("--config.data.levels=foo:1", "data.levels='foo:1'"),  # unknown task level
    ("--config.data.seq_len=4096", "data.seq_len"),  # > model.max_seq_len
    ("--config.optim.lr=nan", "optim.lr=nan: must be a finite number > 0"),
    ("--config.train.log_every=0", "train.log_every=0: must be an int >= 1"),
    ("--config.optim.b2=1.0", "optim.b2=1.0: must be a finite number >= 0 and < 1"),
  ],
)
def test_cli_rejects_bad_config_before_any_work(tmp_path, override, expected):
  """One line on stderr naming the field, exit status 2, no traceback, nothing started."""
  workdir = tmp_path / "run"
  proc = _cli(workdir, override)
  assert proc.returncode == 2, proc.stdout + proc.stderr
  errors = [ln for ln in proc.stderr.splitlines() if ln.startswith("jaxpost: ")]
  assert len(errors) == 1 and expected in errors[0], proc.stderr[-2000:]
  assert "Traceback" not in proc.stderr
  # Nothing was started: no workdir, let alone a tokenizer or checkpoints.
  assert not workdir.exists()


@pytest.mark.parametrize(
  "field, value, match",
  [
    ("recipe", "dpo", "recipe"),
    ("model.size", "huge", "model.size"),
    ("model.dtype", "float16", "model.dtype"),
    ("data.source", "csv", "data.source"),
    ("data.overlong", "drop", "data.overlong"),
    ("data.seq_len", 0, "data.seq_len"),
    ("data.seq_len", 512, "data.seq_len=512 > model.max_seq_len"),
    ("data.batch_size", -8, "data.batch_size"),
    ("data.levels", "", "data.levels is empty"),
    ("data.levels", "add3:0", "data.levels='add3:0': .*the weight of 'add3' must be > 0"),
    ("data.levels", "add3:x", "bad level weight"),
    ("loss.name", "nope", "loss.name"),
    ("loss.cross_entropy.reduction", "sum", "loss.cross_entropy.reduction='sum': must be one"),
    ("loss.cross_entropy.label_smoothing", 1.5, r"loss.cross_entropy.label_smoothing=1.5: .*< 1"),
    ("optim.name", "lion", "optim.name"),
    ("optim.decay", "step", "optim.decay"),
    ("optim.lr", 0.0, "optim.lr"),
    ("train.steps", -1, "train.steps"),
    ("train.microbatches", 3, "train.microbatches=3"),
    ("train.stop_after", -1, "train.stop_after"),
    ("eval.num_examples", 0, "eval.num_examples"),
    ("eval.levels", "add3,nope", "eval.levels"),
    ("eval.final_levels", "nope", "eval.final_levels"),
    ("tokenizer.vocab_size", 0, "tokenizer.vocab_size"),
  ],
)
def test_validate_names_the_field(field, value, match):
  c = _config()
  config_lib.validate(c)  # the shipped config is valid
  config_lib.set_field(c, field, value)
  with pytest.raises(config_lib.ConfigError, match=match):
    config_lib.validate(c)


def test_loss_section_is_checked_against_the_signature():
  """Unknown keys and wrong types in a loss section fail, naming loss.<name>.<key>."""
  c = _config()
  with c.unlocked():
    c.loss.cross_entropy.smoothing = 0.1  # not a parameter of cross_entropy
  with pytest.raises(config_lib.ConfigError, match="loss.cross_entropy.smoothing"):
    config_lib.validate(c)
  c = _config()
  with pytest.raises(TypeError):
    c.loss.cross_entropy.z_loss = "big"  # typed by its default, like every field
  with pytest.raises(AttributeError, match="locked"):
    c.loss.cross_entropy.smoothing = 0.1  # locked: a typo in a method file fails


def test_validate_dataset_source_needs_path(tmp_path):
  c = _config()
  c.data.source = "jsonl"
  with pytest.raises(config_lib.ConfigError, match="data.path"):
    config_lib.validate(c)
  c.data.path = str(tmp_path / "missing.jsonl")
  with pytest.raises(config_lib.ConfigError, match="missing.jsonl'?: no such file"):
    config_lib.validate(c)
  (tmp_path / "missing.jsonl").write_text("")
  config_lib.validate(c)  # levels are not checked for a dataset source
  c.data.levels = ""
  config_lib.validate(c)


def test_final_levels_all_is_valid():
  c = _config()
  c.eval.final_levels = "all"
  config_lib.validate(c)


def test_wrong_type_is_rejected_on_assignment():
  c = _config()
  with pytest.raises(TypeError):
    c.train.steps = "abc"


def test_recipe_validates_before_touching_workdir(tmp_path):
  from jaxpost.recipes import sft

  c = _config()
  c.loss.name = "nope"
  workdir = tmp_path / "run"
  with pytest.raises(config_lib.ConfigError, match="loss.name"):
    sft.run(c, str(workdir))
  assert not workdir.exists()


def _documented_fields(path):
  """{'section.key': has_trailing_comment} for every ``c.<...> = value`` leaf in a config file."""
  source = open(path, encoding="utf-8").read()
  comment_lines = {
    tok.start[0]
    for tok in tokenize.generate_tokens(io.StringIO(source).readline)
    if tok.type == tokenize.COMMENT
  }
  fields = {}
  for node in ast.walk(ast.parse(source)):
    if not (isinstance(node, ast.Assign) and len(node.targets) == 1):
      continue
    target = node.targets[0]
    parts = []
    while isinstance(target, ast.Attribute):
      parts.append(target.attr)
      target = target.value
    if not (isinstance(target, ast.Name) and target.id == "c" and parts):
      continue
    value = node.value
    if isinstance(value, ast.Call) and ast.unparse(value.func).endswith("ConfigDict"):
      continue  # a section, not a field
    fields[".".join(reversed(parts))] = node.end_lineno in comment_lines
  return fields


def _leaves(c, prefix=""):
  out = set()
  for k, v in c.items():
    if isinstance(v, config_dict.ConfigDict):
      out |= _leaves(v, f"{prefix}{k}.")
    else:
      out.add(prefix + k)
  return out


def _generated(c) -> set[str]:
  """Leaves built from registered functions' signatures (documented in their docstrings)."""
  from jaxpost.losses import LOSSES
  from jaxpost.rewards.registry import REWARDS
  from jaxpost.rewards.token import TOKEN_REWARDS

  out = set()
  for name in LOSSES.names():
    out |= {f"loss.{name}.{k}" for k in LOSSES.hparams(name)} if name in c.loss else set()
  if "reward" in c:
    for registry in (TOKEN_REWARDS, REWARDS):  # sequence rewards without a written block too
      for name in registry.names():
        out |= {f"reward.{name}.{k}" for k in registry.hparams(name)}
  if "select" in c:
    from jaxpost.selection import SELECTORS

    for name in SELECTORS.names():
      out |= {f"select.{name}.{k}" for k in SELECTORS.hparams(name)}
  return out


@pytest.mark.parametrize("recipe", ["sft", "rl"])
def test_every_config_field_has_a_trailing_comment(recipe):
  """Shared fields in configs/base.py, a recipe's own in its config_sections; the loss and
  token-reward sections come from signatures (their docstrings: next test)."""
  from jaxpost import recipes

  fields = _documented_fields(BASE)
  fields |= _documented_fields(recipes.get(recipe).__file__)
  assert len(fields) > 40
  undocumented = sorted(k for k, ok in fields.items() if not ok)
  assert not undocumented, f"config fields without a trailing comment: {undocumented}"
  base = config_lib.load_sibling(BASE, "base").get_config(recipe)
  assert set(fields) | _generated(base) == _leaves(base)


def test_every_registered_hyperparameter_is_documented():
  """Each loss / reward / selector hyperparameter is named in its function's docstring."""
  from jaxpost.losses import LOSSES
  from jaxpost.rewards.registry import REWARDS
  from jaxpost.rewards.token import TOKEN_REWARDS
  from jaxpost.selection import SELECTORS

  for registry in (LOSSES, TOKEN_REWARDS, REWARDS, SELECTORS):
    for name in registry.names():
      fn = registry.get(name)
      doc = (getattr(fn, "func", fn).__doc__ or "") + (fn.__doc__ or "")
      missing = [k for k in registry.hparams(name) if f"{k}:" not in doc and f"{k}," not in doc]
      assert not missing, f"{registry.kind} {name!r}: undocumented {missing}"


def _shipped_configs():
  """(file, variant) for every recipe config file next to base.py; sft.py's variants by
  name."""
  out = []
  for name in sorted(os.listdir(os.path.join(REPO, "configs"))):
    if name.endswith(".py") and name != "base.py":
      variants = ("tiny", "qwen2.5-0.5b") if name == "sft.py" else (None,)
      out += [(name, v) for v in variants]
  return out


@pytest.mark.parametrize("name, variant", _shipped_configs())
def test_shipped_configs_only_set_base_fields_and_validate(name, variant):
  """A config that invents a key would bypass the documentation in base.py."""
  module = config_lib.load_sibling(BASE, name.removesuffix(".py"))
  c = module.get_config() if variant is None else module.get_config(variant)
  base = config_lib.load_sibling(BASE, "base").get_config(c.recipe)
  assert _leaves(c) == _leaves(base)
  config_lib.validate(c)


def test_load_config_matches_variants():
  """Scripts and notebooks load configs the way --config=file:variant does."""
  tiny = config_lib.load_config(os.path.join(REPO, "configs/sft.py:tiny"))
  assert tiny.model.size == "tiny" and tiny.recipe == "sft"
  big = config_lib.load_config(os.path.join(REPO, "configs/sft.py:qwen2.5-0.5b"))
  assert big.model.size == "qwen2.5-0.5b"
  quick = config_lib.load_config(os.path.join(REPO, "configs/quickstart.py"))
  config_lib.validate(quick)
  with pytest.raises(ValueError, match="unknown variant"):
    config_lib.load_config(os.path.join(REPO, "configs/sft.py:nope"))


def test_bad_lm_head_fails_before_work():
  c = config_lib.load_config("configs/sft.py:tiny")
  c.kernels.lm_head = "fast"
  with pytest.raises(config_lib.ConfigError, match="kernels.lm_head"):
    config_lib.validate(c)


def _named_variants(module) -> list[str]:
  """The variants a config file names when asked for one it lacks ("expected a | b"),
  suffix options in brackets ("smollm2 [-filt | -gold]") left out."""
  try:
    module.get_config("__no_such_variant__")
  except ValueError as e:
    found = re.search(r"expected (?:one of )?(.+)$", str(e))
    listed = re.sub(r"\[.*?\]|,.*$", "", found.group(1)) if found else ""
    return [v.strip() for v in listed.split("|") if re.fullmatch(r"[\w.\-]+", v.strip())]
  except TypeError:  # get_config() takes no variant
    return []
  return []


# Fields a config leaves for its user to fill in (the data they built, the runs to merge).
USER_SUPPLIED = ("needs data.path", "merge.models is empty")


def test_every_named_variant_of_every_config_validates():
  """Each variant a shipped config names (not only its default) passes every check but
  the existence of paths, which its docstring's commands create: a variant whose rows
  are longer than its model's, say, fails here and not minutes into a run."""
  checked, failures = 0, []
  for name in sorted(os.listdir(os.path.join(REPO, "configs"))):
    if not name.endswith(".py") or name == "base.py":
      continue
    module = config_lib.load_sibling(BASE, name.removesuffix(".py"))
    for variant in _named_variants(module):
      try:
        config_lib.validate(module.get_config(variant), paths=False)
      except config_lib.ConfigError as e:
        if not any(s in str(e) for s in USER_SUPPLIED):
          failures.append(f"{name}:{variant}: {e}")
      checked += 1
  assert checked > 80 and not failures, failures
