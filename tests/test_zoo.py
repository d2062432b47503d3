"""The model zoo: references in config fields, cached builds, resumed builds."""

import json
import logging
import os

import pytest

from jaxpost import config_lib, zoo
from jaxpost.recipes import rl, sft

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
pytestmark = pytest.mark.usefixtures("subprocess_env")


def test_refs_parse_and_unknown_names_suggest():
  assert zoo.is_ref("zoo:tiny-sft") and not zoo.is_ref("runs/x") and not zoo.is_ref(3)
  assert zoo.parse_ref("zoo:tiny-sft") == ("tiny-sft", 0)
  assert zoo.parse_ref("zoo:rl-start@2") == ("rl-start", 2)
  with pytest.raises(ValueError, match="did you mean 'rl-start'"):
    zoo.parse_ref("zoo:rl-strat")
  with pytest.raises(ValueError, match="non-negative integer"):
    zoo.parse_ref("zoo:rl-start@-1")
  assert zoo.resolve("runs/x") == "runs/x"  # a path is a path


@pytest.mark.parametrize("name", list(zoo.ENTRIES))
def test_every_entry_is_a_valid_config(name):
  c = zoo.config_of(name, seed=3)
  assert c.seed == 3
  config_lib.validate(c)
  # Deterministic: a step budget (never the wall clock) and nothing left to chance.
  assert c.train.max_minutes == 0.0 or c.train.stop_at or c.train.steps


def test_key_covers_config_seed_and_version(monkeypatch):
  k = zoo.key("tiny-sft", 0)
  assert k.startswith("tiny-sft@0-") and zoo.key("tiny-sft", 0) == k
  assert zoo.key("tiny-sft", 1) != k
  edited = zoo.Entry(
    **{
      **zoo.ENTRIES["tiny-sft"].__dict__,
      "overrides": {**zoo.ENTRIES["tiny-sft"].overrides, "optim.lr": 1e-3},
    }
  )
  monkeypatch.setitem(zoo.ENTRIES, "tiny-sft", edited)
  assert zoo.key("tiny-sft", 0) != k
  monkeypatch.undo()
  monkeypatch.setattr(zoo.jaxpost, "__version__", "9.9.9")
  assert zoo.key("tiny-sft", 0) != k


def test_build_resumes_a_killed_build_then_reuses_it(monkeypatch, caplog):
  name, seed = "tiny-sft", 7  # a seed no other test uses: this test builds it
  final = os.path.join(zoo.cache_dir(), zoo.key(name, seed))
  assert zoo.built(name, seed) is None
  with pytest.raises(FileNotFoundError, match="not built"):
    zoo.path(name, seed, build=False)
  # A build killed after 10 of its 30 steps left its partial workdir behind.
  partial_config = zoo.config_of(name, seed)
  partial_config.train.stop_after = 10  # (its last checkpoint is step 10)
  sft.run(partial_config, final + ".partial")  # stop_after: run control, same identity
  with caplog.at_level(logging.INFO):
    assert zoo.path(name, seed) == final
  assert "resumed at step 10" in caplog.text  # continued the partial build, not a rebuild
  assert not os.path.exists(final + ".partial")
  record = zoo.info(name, seed)
  assert record["name"] == name and record["seed"] == seed and record["result"]["step"] == 30
  with open(os.path.join(final, "metrics.jsonl")) as f:
    steps = [json.loads(line)["step"] for line in f if "train/loss" in line]
  # One run: the killed build's steps, then the rest, each step logged once.
  assert steps == sorted(set(steps)) and steps[0] <= 10 < steps[-1] == 30
  # Built: never built again.
  monkeypatch.setattr(zoo, "_build", lambda *a: pytest.fail("rebuilt a built entry"))
  assert zoo.path(name, seed) == final
  assert zoo.resolve(f"zoo:{name}@{seed}") == final
  # Under an older key (another hash scheme): found by its recorded config and data...
  older = final.rsplit("-", 1)[0] + "-0000000000"
  os.replace(final, older)
  original = open(os.path.join(older, "run.json")).read()
  try:
    assert zoo.built(name, seed) == older
    # ... but not once the entry's config differs from what that build recorded.
    identity = os.path.join(older, "run.json")
    recorded = json.load(open(identity))
    recorded["config"]["optim.lr"] = 0.123
    json.dump(recorded, open(identity, "w"))
    assert zoo.built(name, seed) is None
  finally:
    with open(os.path.join(older, "run.json"), "w") as f:
      f.write(original)
    os.replace(older, final)


def test_rl_starts_from_a_zoo_entry(tmp_path):
  c = config_lib.load_config(os.path.join(REPO, "configs/grpo.py:tiny"))
  c.train.init_from = "zoo:tiny-sft"
  c.train.steps = 1
  c.train.progress = False
  out = rl.run(c, str(tmp_path / "rl"))
  assert out["step"] == 1
  with open(os.path.join(tmp_path, "rl", "run.json")) as f:
    assert json.load(f)["config"]["train.init_from"] == "zoo:tiny-sft"  # the name, not a path


def test_cli_list_and_errors(capsys):
  assert zoo.main(["list"]) == 0
  out = capsys.readouterr().out
  assert all(name in out for name in zoo.ENTRIES) and zoo.cache_dir() in out
  assert zoo.main(["path", "nope"]) == 2
  assert "no zoo entry 'nope'" in capsys.readouterr().err
