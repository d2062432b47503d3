"""recipe=federated end to end on configs/fedsd.py:tiny: FedSDR's round (stage masks, what
is uploaded, what the server computes, what stays on the clients), resume, FedSD's
rewrite, the other aggregations, and the config's refusals."""

import json
import os

import jax
import numpy as np
import pytest
from flax import nnx
from tiny_configs import shipped

from jaxpost import checkpoint, config_lib, train
from jaxpost.data import generated
from jaxpost.federated import aggregate, clients
from jaxpost.recipes import federated

pytestmark = pytest.mark.usefixtures("subprocess_env")


def fed_tiny(**overrides):
  return shipped("fedsd.py:tiny", **overrides)


def _is(adapter):
  return lambda path: f".lora.{adapter}." in f".{path}."


def _leaves(state, keep):
  return {p: np.asarray(x) for p, x in zip(train.param_paths(state), jax.tree.leaves(state),
                                            strict=True) if keep(p)}  # fmt: skip


@pytest.fixture(scope="module")
def recorded(tmp_path_factory):
  """A 2-round FedSDR run with every local stage and server step recorded."""
  calls = {"local": [], "server": []}
  real_local, real_server = clients.make_local_rounds, aggregate.server_update

  def make_local(step_fn):
    fn = real_local(step_fn)

    def local(states, batches, frozen):
      out = fn(states, batches, frozen)
      calls["local"].append((states.params, out[0].params))
      return out

    return local

  def server(optimizer, params, opt_state, stacked, weights):
    out = real_server(optimizer, params, opt_state, stacked, weights)
    calls["server"].append((params, stacked, np.asarray(weights), out[0]))
    return out

  workdir = str(tmp_path_factory.mktemp("fedsdr"))
  with pytest.MonkeyPatch.context() as mp:
    mp.setattr(clients, "make_local_rounds", make_local)
    mp.setattr(aggregate, "server_update", server)
    summary = federated.run(fed_tiny(), workdir)
  return workdir, summary, calls


def test_fedsdr_stages_train_one_adapter_each(recorded):
  """Stage 1 moves only the smoothing adapter, stage 2 only the global one (masked:
  bit-identical), in every round, for every client."""
  _, _, calls = recorded
  assert len(calls["local"]) == 4  # 2 rounds x 2 stages
  for i, (before, after) in enumerate(calls["local"]):
    moves, stays = ("smoothing", "default") if i % 2 == 0 else ("default", "smoothing")
    b, a = _leaves(before, _is(stays)), _leaves(after, _is(stays))
    assert b and all(np.array_equal(b[p], a[p]) for p in b), f"call {i}: {stays} moved"
    b, a = _leaves(before, _is(moves)), _leaves(after, _is(moves))
    assert all(not np.array_equal(b[p], a[p]) for p in b if p.endswith(".b")), moves


def test_fedsdr_server_averages_the_global_adapter_and_clients_keep_theirs(recorded):
  workdir, _, calls = recorded
  _, stacked, weights, new = calls["server"][-1]
  assert weights.shape == (4,) and np.isclose(weights.sum(), 1.0)
  paths = train.param_paths(stacked)
  assert paths and all(".lora.default." in p for p in paths)  # only the global adapter goes up
  for p, x, c in zip(paths, jax.tree.leaves(new), jax.tree.leaves(stacked), strict=True):
    np.testing.assert_allclose(
      x, np.tensordot(weights, np.asarray(c), axes=1), rtol=1e-5, atol=1e-6, err_msg=p
    )  # fmt: skip  (fedavg, server lr 1)
  # The run's checkpoint holds the global adapter the server computed last ...
  saved = checkpoint.saved_params(workdir)
  assert set(saved) == set(paths)
  for p, x in zip(paths, jax.tree.leaves(new), strict=True):
    np.testing.assert_array_equal(saved[p], np.asarray(x))
  # ... and the clients' smoothing adapters are what stage 1 of the last round left.
  stage1_out = _leaves(calls["local"][-2][1], _is("smoothing"))
  kept, _ = checkpoint.Checkpointer(os.path.join(workdir, "clients"), async_save=False).restore(
    None, like=federated._split_adapters(calls["local"][-2][1], "default")[1]
  )  # fmt: skip
  for p, x in _leaves(kept, lambda p: True).items():
    np.testing.assert_array_equal(x, stage1_out[p])
  # One adapter's bytes per client each way: the smoothing adapter never travels.
  one = aggregate.payload_bytes(jax.tree.map(lambda x: x[0], stacked))
  records = [json.loads(line) for line in open(os.path.join(workdir, "metrics.jsonl"))]
  up = [r["fed/upload_bytes"] for r in records if "fed/upload_bytes" in r]
  assert up == [4 * one, 4 * one]
  assert [r for r in records if "fed/total_bytes" in r][-1]["fed/total_bytes"] == 2 * 2 * 4 * one
  assert one == aggregate.payload_bytes(_leaves(kept, lambda p: True)) // 4
  # The workdir is an ordinary LoRA run: load_run rebuilds start + global adapter.
  model, _, _ = generated.load_run(workdir)
  loaded = _leaves(nnx.state(model, nnx.Param), _is("default"))
  for p, x in zip(paths, jax.tree.leaves(new), strict=True):
    np.testing.assert_array_equal(loaded[p], np.asarray(x))


def test_a_resumed_run_ends_where_the_uninterrupted_one_does(recorded, tmp_path):
  workdir, _, _ = recorded
  wd = str(tmp_path / "resumed")
  assert federated.run(fed_tiny(**{"train.stop_at": 1}), wd)["step"] == 1
  assert federated.run(fed_tiny(), wd)["step"] == 2
  assert federated.run(fed_tiny(), wd)["step"] == 2  # finished: reports, saves nothing new
  want, got = checkpoint.saved_params(workdir), checkpoint.saved_params(wd)
  assert set(want) == set(got)
  for p in want:
    np.testing.assert_allclose(got[p], want[p], rtol=1e-6, atol=1e-7, err_msg=p)


def test_fedsd_trains_on_the_rewrites_and_product_aggregation_runs(tmp_path):
  wd = str(tmp_path / "fedsd")
  c = fed_tiny(**{"fed.method": "fedsd", "fed.lora_aggregation": "product", "train.steps": 1,
                  "fed.rewrite_context": "none"})  # fmt: skip
  summary = federated.run(c, wd)
  rows = [json.loads(line) for line in open(os.path.join(wd, "distilled.jsonl"))]
  assert len(rows) == c.fed.examples
  records = [json.loads(line) for line in open(os.path.join(wd, "metrics.jsonl"))]
  stats = [r for r in records if "rewrite/correct" in r]
  assert len(stats) == 1 and stats[0]["step"] == 0
  assert {"rewrite/kept_raw", "rewrite/changed"} <= set(stats[0])
  assert summary["step"] == 1 and "fed/local_loss" in summary


@pytest.mark.parametrize(
  "overrides, match",
  [
    ({"lora.rank": 0}, "lora.rank"),
    ({"fed.aggregator": "fedprox"}, "l2_to_start"),
    ({"fed.aggregator": "fedyogi", "fed.lora_aggregation": "product"}, "product"),
    ({"fed.method": "fedavg", "fed.eval_clients": True}, "eval_clients"),
    ({"lora.name": "smoothing"}, "smoothing"),
  ],
)
def test_bad_federated_configs_are_refused(overrides, match):
  with pytest.raises(config_lib.ConfigError, match=match):
    config_lib.validate(fed_tiny(**overrides))
