"""README.md's code: every ```python block runs and every ``jaxpost.main`` command parses.

Python blocks run as written after a prelude that binds their placeholders (small random
arrays, a tiny Hugging Face checkpoint built with ``jaxpost.models.hf.save_model``). Each
prelude claims its block by a substring only that block has; a block that no prelude (or
more than one) claims fails the test, so a new snippet cannot go in unrun.

``python -m jaxpost.main ...`` commands (in ```bash blocks and in inline code) are parsed
with the CLI's own flag machinery (``ml_collections.config_flags``): the config file and
variant must load and every ``--config.a.b=v`` must name an existing field and parse as its
type. Nothing is trained and ``config_lib.validate`` is not run, so placeholder paths
(``data.jsonl``, ``runs/quickstart``, ``path/to/...``) need not exist.
"""

from __future__ import annotations

import dataclasses
import pathlib
import re
import shlex
from collections.abc import Callable
from typing import Any

import jax.numpy as jnp
import numpy as np
import pytest
import tokenizers
from absl import flags
from ml_collections import config_flags

from jaxpost.data.tokenizer import HFTokenizer
from jaxpost.models import ModelConfig
from jaxpost.models import hf as hf_lib

ROOT = pathlib.Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text(encoding="utf-8")
# A fenced block: its info string and its body (lazy: up to the next closing fence).
FENCE = re.compile(r"^```([^\n`]*)\n(.*?)^```[ \t]*$", re.MULTILINE | re.DOTALL)
KNOWN_FENCES = ("", "python", "bash")
CLI = ("-m", "jaxpost.main")


@dataclasses.dataclass(frozen=True)
class Block:
  """A fenced block of README.md."""

  lang: str
  body: str
  line: int  # README line of the body's first line

  @property
  def name(self) -> str:
    return f"README.md:{self.line}"


def _blocks() -> list[Block]:
  return [
    Block(m.group(1).strip(), m.group(2), README.count("\n", 0, m.start(2)) + 1)
    for m in FENCE.finditer(README)
  ]


BLOCKS = _blocks()
PYTHON = [b for b in BLOCKS if b.lang == "python"]


# ---------------------------------------------------------------------------- preludes


@dataclasses.dataclass(frozen=True)
class Prelude:
  """What one README snippet needs: its placeholders in, a check of its results out.

  Attributes:
    marker: a substring that only this snippet contains.
    setup: (tmp_path, random_decoder) -> (namespace, {placeholder text: replacement}).
    check: (namespace after running, tmp_path) -> None; asserts on the results.
  """

  marker: str
  setup: Callable[[pathlib.Path, Any], tuple[dict[str, Any], dict[str, str]]]
  check: Callable[[dict[str, Any], pathlib.Path], None]


def _kernels_setup(tmp_path, random_decoder):
  del tmp_path, random_decoder
  rng = np.random.default_rng(0)
  n, d, d_t, v = 12, 16, 8, 64

  def normal(*shape):
    return jnp.asarray(rng.standard_normal(shape), jnp.float32)

  namespace = dict(
    h=normal(n, d),
    w=normal(d, v),
    h_t=normal(n, d_t),
    w_t=normal(d_t, v),
    mask=jnp.asarray(np.arange(n) % 4 != 3),
    token_weights=jnp.asarray(rng.uniform(size=n), jnp.float32),
    weights=jnp.asarray(rng.uniform(size=n), jnp.float32),
  )
  return namespace, {}


def _kernels_check(namespace, tmp_path):
  del tmp_path
  for name in ("loss", "total"):
    value = np.asarray(namespace[name])
    assert value.shape == () and np.isfinite(value) and value > 0, (name, value)
  assert namespace["stats"].loss.shape == (12,)


HF_PLACEHOLDER = '"path/to/Qwen2.5-0.5B"'
HF_VOCAB = 40
HF_CONFIG = ModelConfig(
  vocab_size=HF_VOCAB,
  d_model=16,
  n_layers=1,
  n_heads=2,
  n_kv_heads=1,
  head_dim=8,
  mlp_dim=32,
  max_seq_len=32,
)


def _word_tokenizer() -> HFTokenizer:
  """WordLevel tokenizer: <pad> 0, </s> 1, <s> 2, <unk> 3, then w0, w1, ..."""
  vocab = {"<pad>": 0, "</s>": 1, "<s>": 2, "<unk>": 3}
  vocab.update({f"w{i}": 4 + i for i in range(HF_VOCAB - 4)})
  tok = tokenizers.Tokenizer(tokenizers.models.WordLevel(vocab, unk_token="<unk>"))
  tok.pre_tokenizer = tokenizers.pre_tokenizers.WhitespaceSplit()
  tok.add_special_tokens(["<pad>", "</s>", "<s>", "<unk>"])
  return HFTokenizer(tok, pad_id=0, bos_id=2, eos_id=1)


def _hf_setup(tmp_path, random_decoder):
  checkpoint = tmp_path / "checkpoint"
  hf_lib.save_model(random_decoder(HF_CONFIG, seed=1), checkpoint, tokenizer=_word_tokenizer())
  return {}, {HF_PLACEHOLDER: repr(str(checkpoint))}


def _hf_check(namespace, tmp_path):
  assert namespace["model"].config == HF_CONFIG
  assert namespace["tokenizer"].encode("w0 w5") == [4, 9]
  out = tmp_path / "out"  # the snippet's "out/", relative to the working directory
  for name in ("config.json", "model.safetensors", "tokenizer.json"):
    assert (out / name).is_file(), name
  reloaded, tokenizer = hf_lib.load_model_and_tokenizer(out)
  assert reloaded.config == HF_CONFIG and tokenizer.eos_id == 1


TP_PLACEHOLDER = '"configs/token_priority.py:tiny"'


def _adding_setup(tmp_path, random_decoder):
  del tmp_path, random_decoder
  return {}, {TP_PLACEHOLDER: repr(str(ROOT / "configs" / "token_priority.py") + ":tiny")}


def _adding_check(namespace, tmp_path):
  del tmp_path
  c = namespace["c"]
  assert c.loss.token_priority.prob_power == 1.0 and c.recipe == "sft"


PRELUDES = (
  Prelude("fused_linear_divergence_sum(", _kernels_setup, _kernels_check),
  Prelude("c.loss.token_priority.prob_power", _adding_setup, _adding_check),
  Prelude("hf.load_model_and_tokenizer(", _hf_setup, _hf_check),
)


def _owners(block: Block) -> list[Prelude]:
  return [p for p in PRELUDES if p.marker in block.body]


def test_fences_are_known_and_python_blocks_each_have_one_prelude():
  assert {b.lang for b in BLOCKS} <= set(KNOWN_FENCES), [b.lang for b in BLOCKS]
  assert PYTHON, "README.md has no ```python block"
  for block in PYTHON:
    owners = [p.marker for p in _owners(block)]
    assert len(owners) == 1, f"{block.name}: preludes {owners}; add one to tests/test_readme.py"
  for prelude in PRELUDES:
    assert any(prelude.marker in b.body for b in PYTHON), f"stale prelude {prelude.marker!r}"


@pytest.mark.parametrize("block", PYTHON, ids=lambda b: b.name)
def test_python_block_runs(block, tmp_path, monkeypatch, random_decoder):
  (prelude,) = _owners(block)
  monkeypatch.chdir(tmp_path)  # relative output paths (e.g. "out/") land in tmp_path
  namespace, placeholders = prelude.setup(tmp_path, random_decoder)
  source = block.body
  for placeholder, value in placeholders.items():
    assert placeholder in source, f"{block.name}: placeholder {placeholder} is gone"
    source = source.replace(placeholder, value)
  # Leading newlines: a traceback names the README line.
  exec(compile("\n" * (block.line - 1) + source, "README.md", "exec"), namespace)
  prelude.check(namespace, tmp_path)


# ---------------------------------------------------------------------------- commands


def _commands(text: str) -> list[list[str]]:
  """argv (after ``python -m jaxpost.main``) of each such command in shell text."""
  found = []
  for line in text.replace("\\\n", " ").splitlines():
    lexer = shlex.shlex(line, posix=True, punctuation_chars=True)
    lexer.whitespace_split = True
    words, command = list(lexer), []
    for word in [*words, ";"]:
      if word in ("&&", "||", ";", "|", "&"):
        if len(command) > 2 and command[0] in ("python", "python3") and tuple(command[1:3]) == CLI:
          found.append(command[3:])
        command = []
      else:
        command.append(word)
  return found


def _readme_commands() -> list[tuple[str, list[str], bool]]:
  """(where, argv, full) for every jaxpost.main command; full: in a ```bash block."""
  out = []
  for block in BLOCKS:
    if block.lang == "bash":
      argvs = _commands(block.body)
      out += [(f"{block.name} #{i + 1}", argv, True) for i, argv in enumerate(argvs)]
  prose = FENCE.sub(lambda m: "\n" * m.group(0).count("\n"), README)
  for m in re.finditer(r"`([^`\n]+)`", prose):
    line = prose.count("\n", 0, m.start()) + 1
    out += [(f"README.md:{line} (inline)", argv, False) for argv in _commands(m.group(1))]
  return out


COMMANDS = _readme_commands()


def _parse(argv: list[str]):
  """The CLI's flags (as in jaxpost.main) parsed from argv: (config, workdir)."""
  values = flags.FlagValues()
  full = ["jaxpost.main", *argv]
  config_flags.DEFINE_config_file("config", None, "config", flag_values=values, sys_argv=full)
  flags.DEFINE_string("workdir", None, "output directory", flag_values=values)
  rest = values(full)
  assert rest == ["jaxpost.main"], f"unexpected arguments: {rest[1:]}"
  return values.config, values.workdir


def test_readme_has_the_commands():
  # quickstart, two SFT runs, one RL run in ```bash blocks; two inline mentions.
  assert sum(full for _, _, full in COMMANDS) >= 4 and len(COMMANDS) >= 6, COMMANDS


@pytest.mark.parametrize("where, argv, full", COMMANDS, ids=[c[0] for c in COMMANDS])
def test_command_parses(where, argv, full, monkeypatch):
  monkeypatch.chdir(ROOT)  # config paths are relative to the repository root
  assert any(a.startswith("--config=") for a in argv), where
  config, workdir = _parse(argv)
  assert config is not None and "recipe" in config, where
  if full:  # a command to copy needs --workdir (jaxpost.main requires it)
    assert workdir, f"{where}: no --workdir"
  for arg in argv:
    if arg.startswith("--config."):
      key, _, value = arg.removeprefix("--config.").partition("=")
      field = config
      for part in key.split("."):
        field = field[part]
      assert str(field) == value or field == type(field)(value), (where, key, field, value)


def test_command_parsing_rejects_unknown_keys_and_bad_types(monkeypatch):
  """The checks above can fail: the parser rejects what a stale README would hold."""
  monkeypatch.chdir(ROOT)
  good = ["--config=configs/sft.py:tiny", "--workdir=runs/x"]
  assert _parse([*good, "--config.optim.lr=3e-4"])[0].optim.lr == pytest.approx(3e-4)
  # An unknown key raises what config_dict raises for it (as the CLI itself does).
  with pytest.raises(AttributeError, match="no_such_field"):
    _parse([*good, "--config.optim.no_such_field=1"])
  with pytest.raises(KeyError, match="no_such_section"):
    _parse([*good, "--config.no_such_section.lr=1"])
  with pytest.raises(flags.IllegalFlagValueError, match="optim.lr"):
    _parse([*good, "--config.optim.lr=fast"])
  with pytest.raises(flags.UnrecognizedFlagError, match="bogus"):
    _parse([*good, "--bogus=1"])
  assert _commands("a && python -m jaxpost.main --config=c.py \\\n  --x=1 | tee log") == [
    ["--config=c.py", "--x=1"]
  ]


def test_no_two_test_modules_share_a_basename():
  """pytest imports test modules by basename (no packages under tests/): a second
  test_x.py anywhere is not collected, and the run ends in a collection error."""
  import collections

  tests = pathlib.Path(__file__).resolve().parent
  names = collections.Counter(p.name for p in tests.rglob("test_*.py"))
  assert not [n for n, k in names.items() if k > 1]


def test_no_docstring_joins_its_command_lines():
  """A shell command in a docstring continues with `\\` at the end of a line; in a
  plain (not raw) string a single backslash there joins the two lines instead, so the
  printed command loses its line break. Written `\\\\`, it shows as `\\`."""
  import ast

  joined = []
  for folder in ("jaxpost", "configs", "experiments", "tpu"):
    for path in sorted((ROOT / folder).rglob("*.py")):
      source = path.read_text(encoding="utf-8")
      for node in ast.walk(ast.parse(source)):
        body = getattr(node, "body", None)
        if not (isinstance(body, list) and body and isinstance(body[0], ast.Expr)):
          continue
        doc = ast.get_source_segment(source, body[0].value) or ""
        if doc[:1] in "\"'" and re.search(r"(?<!\\)(\\\\)*\\\n", doc):
          joined.append(f"{path.relative_to(ROOT)}:{body[0].lineno}")
  assert not joined, joined
