"""LoRA through the recipes (``lora.rank``): SFT, RL and distillation train adapters
only, over a base that stays the start's bit for bit; checkpoints hold the adapters;
``load_run`` rebuilds the trained model; ``train.export_hf`` writes the merged model
and the PEFT adapter."""

import json
import os

import jax
import numpy as np
import pytest
from flax import nnx
from tiny_configs import REPO, sft_tiny  # tests/recipes

from jaxpost import checkpoint, config_lib, peft, train
from jaxpost.data import generated
from jaxpost.models import hf
from jaxpost.recipes import merge as merge_recipe
from jaxpost.recipes import rl, sft

pytestmark = pytest.mark.usefixtures("subprocess_env")

LORA = {"lora.rank": 4, "lora.targets": r"(attn\.(q|k|v|o)_proj|mlp\.(gate|up|down)_proj)$"}


@pytest.fixture(scope="module")
def start(tmp_path_factory):
  """A tiny SFT run: the base the adapters train on (and the distillation teacher)."""
  workdir = str(tmp_path_factory.mktemp("start"))
  sft.run(sft_tiny(**{"train.steps": 4, "optim.lr": 5e-3}), workdir)
  return workdir


def _saved(workdir):
  return checkpoint.saved_params(workdir)


def _leaves(state):
  return dict(zip(train.param_paths(state), jax.tree.leaves(state), strict=True))


def test_lora_sft_keeps_the_base_and_is_rebuilt_and_exported(tmp_path, start):
  out = str(tmp_path / "lora")
  c = sft_tiny(**{"train.init_from": start, "train.steps": 3, "optim.lr": 1e-2,
                  "train.export_hf": True, **LORA})  # fmt: skip
  sft.run(c, out)
  saved, base = _saved(out), _saved(start)
  assert saved and all(".lora.default." in p for p in saved)  # adapters only
  assert len(saved) == 2 * 7 * 2  # 2 layers x 7 linears x (A, B)
  assert all(np.abs(v).max() > 0 for p, v in saved.items() if p.endswith(".b"))  # B left 0
  # load_run: the start's base (from the run's own start) + the run's adapters.
  model, _, _ = generated.load_run(out)
  _, adapters, rest = nnx.split(model, peft.adapter_filter(), ...)
  for path, x in _leaves(nnx.state(rest, nnx.Param)).items():
    assert np.asarray(x).tobytes() == base[path].tobytes(), path
  for path, x in _leaves(adapters).items():
    np.testing.assert_array_equal(np.asarray(x), saved[path])
  # The export: the merged model for transformers, the adapter in the PEFT format.
  tokens = np.asarray([[3, 5, 7, 9, 11, 13]], np.int32)
  expected = nnx.clone(model)(tokens)
  merged = hf.load_model(os.path.join(out, "hf"))
  np.testing.assert_allclose(merged(tokens), expected, rtol=1e-5, atol=1e-5)
  with open(os.path.join(out, "hf_adapter", "adapter_config.json"), encoding="utf-8") as f:
    config = json.load(f)
  assert config["peft_type"] == "LORA" and config["r"] == 4 and len(config["target_modules"]) == 14


def test_lora_rl_and_distillation_train_adapters_only(tmp_path, start):
  grpo = config_lib.load_config(os.path.join(REPO, "configs/grpo.py:tiny"))
  for field, value in {
    "train.init_from": start, "train.steps": 1, "train.progress": False, "eval.every": 0,
    "eval.num_examples": 4, "eval.batch_size": 4, "eval.max_new_tokens": 4,
    "rl.prompts_per_step": 2, "rl.samples_per_prompt": 4, "rl.max_new_tokens": 8,
    "rl.temperature": 2.0, "reward.terms": (("length", 1.0),), "optim.l2_to_start": 0.1,
    **LORA,
  }.items():  # fmt: skip
    config_lib.set_field(grpo, field, value)
  result = rl.run(grpo, str(tmp_path / "rl"))
  assert np.isfinite(result["train/loss"])
  assert all(".lora.default." in p for p in _saved(str(tmp_path / "rl")))

  kd = sft_tiny(**{"loss.name": "kd", "teacher.init_from": start, "train.steps": 2,
                   "model.size": "tiny", **LORA})  # fmt: skip
  result = sft.run(kd, str(tmp_path / "kd"))  # a fresh student's adapters against the start
  assert result["train/divergence"] > 0
  assert all(".lora.default." in p for p in _saved(str(tmp_path / "kd")))


def test_lora_config_errors_fail_before_work(tmp_path):
  with pytest.raises(config_lib.ConfigError, match="lora.targets"):
    config_lib.validate(sft_tiny(**{"lora.rank": 2, "lora.targets": "("}))
  with pytest.raises(config_lib.ConfigError, match="lora: .*match no linear"):
    sft.run(sft_tiny(**{"lora.rank": 2, "lora.targets": "nothing_here"}), str(tmp_path / "w"))


def test_head_sparse_sft_moves_only_the_chosen_heads_slices(tmp_path, start):
  """train.heads from a start: after AdamW steps with weight decay, the chosen query
  heads' q / o slices and their kv heads' k / v slices all moved; every other entry of
  the model is the start's bit for bit (the checkpoint holds only the touched
  projections)."""
  out = str(tmp_path / "heads")
  c = sft_tiny(**{"train.init_from": start, "train.steps": 3, "optim.lr": 1e-2,
                  "optim.weight_decay": 0.1, "train.heads": "1:2"})  # fmt: skip
  sft.run(c, out)
  model, _, _ = generated.load_run(out)
  n_heads, n_kv = model.config.n_heads, model.config.n_kv_heads
  kv = 2 // (n_heads // n_kv)
  base = _saved(start)
  moved = {}
  for path, x in _leaves(nnx.state(model, nnx.Param)).items():
    x, x0 = np.asarray(x), base[path]
    if path == "layers.1.attn.q_proj.kernel":
      moved["q"] = np.all(x[:, 2] != x0[:, 2])
      np.testing.assert_array_equal(np.delete(x, 2, axis=1), np.delete(x0, 2, axis=1))
    elif path == "layers.1.attn.o_proj.kernel":
      moved["o"] = np.all(x[2] != x0[2])
      np.testing.assert_array_equal(np.delete(x, 2, axis=0), np.delete(x0, 2, axis=0))
    elif path in ("layers.1.attn.k_proj.kernel", "layers.1.attn.v_proj.kernel"):
      moved[path[14]] = np.all(x[:, kv] != x0[:, kv])
      np.testing.assert_array_equal(np.delete(x, kv, axis=1), np.delete(x0, kv, axis=1))
    else:
      assert x.tobytes() == x0.tobytes(), path
  assert moved == {"q": True, "o": True, "k": True, "v": True}
  assert set(_saved(out)) == {f"layers.1.attn.{p}_proj.kernel" for p in "qkvo"}
  with pytest.raises(config_lib.ConfigError, match="train.heads chooses"):
    config_lib.validate(sft_tiny(**{"train.heads": "0:0", "lora.rank": 2}))
  with pytest.raises(config_lib.ConfigError, match="train.heads: head 9"):
    sft.run(sft_tiny(**{"train.heads": "0:9"}), str(tmp_path / "bad"))


def test_merge_cli_runs_and_hf_dirs(tmp_path, start):
  """The merge CLI: two fine-tunes of the start (one through LoRA, merged in first)
  merged by TIES against it into a run that load_run and train.init_from read, equal
  to the methods on the parameters; into HF, and from HF with a tied / untied pair."""
  from ml_collections import config_dict

  from jaxpost import merging
  from jaxpost.merging import cli

  a, b = str(tmp_path / "a"), str(tmp_path / "b")
  sft.run(sft_tiny(**{"train.init_from": start, "train.steps": 2, "optim.lr": 1e-2}), a)
  sft.run(sft_tiny(**{"train.init_from": start, "train.steps": 2, "optim.lr": 1e-2,
                      "seed": 7, **LORA}), b)  # fmt: skip
  c = config_lib.load_config(os.path.join(REPO, "configs/merge.py:default")).merge
  c.update(models=f"{a},{b}", base=start, method="ties", density=0.5)
  out = cli.run(c, str(tmp_path / "merged"))
  got = nnx.state(generated.load_run(out)[0], nnx.Param)
  trees = [nnx.state(cli.load_source(r)[0], nnx.Param) for r in (a, b, start)]
  want = merging.ties(trees[2], trees[:2], density=0.5)
  for x, y in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
  sft.run(sft_tiny(**{"train.init_from": out, "train.steps": 1}), str(tmp_path / "next"))

  # recipe=merge: the same merge as the run's step-0 checkpoint, evaluated; a rerun reuses it.
  recipe = str(tmp_path / "recipe")
  rc = config_lib.load_config(os.path.join(REPO, "configs/merge.py:default"))
  for field, value in {"merge.models": f"{a},{b}", "merge.base": start, "merge.method": "ties",
                       "merge.density": 0.5, "eval.num_examples": 4, "eval.batch_size": 4,
                       "eval.max_new_tokens": 4, "data.levels": "add3:1.0"}.items():  # fmt: skip
    config_lib.set_field(rc, field, value)
  summary = merge_recipe.run(rc, recipe)
  assert "eval/accuracy/add3" in summary and summary["step"] == 0
  for x, y in zip(jax.tree.leaves(nnx.state(generated.load_run(recipe)[0], nnx.Param)),
                  jax.tree.leaves(want), strict=True):  # fmt: skip
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
  assert not [f for f in os.listdir(recipe) if f.startswith("merging.")]  # no temp left
  with pytest.MonkeyPatch.context() as mp:  # resumed: the checkpoint is the merge
    mp.setattr(cli, "run", lambda *a: pytest.fail("merged again"))
    assert merge_recipe.run(rc, recipe)["eval/accuracy/add3"] == summary["eval/accuracy/add3"]

  c.update(format="hf", method="linear", base="")
  hf_out = cli.run(c, str(tmp_path / "hf"))
  tokens = np.asarray([[2, 4, 6, 8]], np.int32)
  lin = merging.average(trees[:2])
  model = cli.load_source(a)[0]
  nnx.update(model, lin)
  np.testing.assert_allclose(hf.load_model(hf_out)(tokens), model(tokens), rtol=1e-5, atol=1e-5)
  with pytest.raises(ValueError, match="not empty"):
    cli.run(c, hf_out)
  bad = config_dict.ConfigDict(c.to_dict())
  bad.update(method="ties")
  with pytest.raises(ValueError, match="needs merge.base"):
    cli.run(bad, str(tmp_path / "x"))
