"""recipe=p2d on configs/p2d.py:tiny: the pipeline's outputs, head-sparse adaptation over
the kept data, AER against the full fine-tuning reference, and the config's refusals."""

import json
import math
import os

import numpy as np
import pytest
from tiny_configs import shipped

from jaxpost import checkpoint, config_lib
from jaxpost.recipes import p2d

pytestmark = pytest.mark.usefixtures("subprocess_env")


def p2d_tiny(**overrides):
  return shipped("p2d.py:tiny", **overrides)


def test_p2d_keeps_its_fractions_trains_only_the_kept_heads_and_reports_aer(tmp_path):
  full = str(tmp_path / "full")
  ref = p2d.run(p2d_tiny(**{"p2d.heads": "all", "p2d.data": "all"}), full)
  assert ref["p2d/aer"] == 1.0  # full fine-tuning on all data is its own reference
  assert ref["p2d/kept_examples"] == 48 and ref["p2d/kept_heads"] == -1
  wd = str(tmp_path / "p2d")
  c = p2d_tiny(**{"p2d.reference": full})
  out = p2d.run(c, wd)
  # Exactly ceil(fraction x N) heads and examples, written where the adaptation reads them.
  chosen = json.load(open(os.path.join(wd, "heads.json")))
  assert sum(map(len, chosen["heads"].values())) == math.ceil(0.25 * 2 * 4) == out["p2d/kept_heads"]
  assert chosen["method"] == "alps" and np.asarray(chosen["scores"]).shape == (2, 4)
  kept = [json.loads(line) for line in open(os.path.join(wd, "selected.jsonl"))]
  assert len(kept) == math.ceil(0.25 * 48) == out["p2d/kept_examples"]
  assert out["p2d/kept_target_fraction"] == np.mean([r["level"] == "mul2x2" for r in kept])
  # The adaptation: ceil(epochs x kept / batch) steps; only the kept heads' projections saved.
  assert out["step"] == math.ceil(1.0 * 12 / 8)
  saved = checkpoint.saved_params(os.path.join(wd, "adapt"))
  assert saved and all(".attn." in path for path in saved)
  # AER = (selection + adaptation) / the reference's end-to-end seconds.
  times = json.load(open(os.path.join(wd, p2d.TIMES_FILE)))
  want = (times["selection_s"] + times["adapt_s"]) / ref["p2d/end_to_end_s"]
  assert out["p2d/aer"] == pytest.approx(want)
  records = [json.loads(line) for line in open(os.path.join(wd, "metrics.jsonl"))]
  assert records[-1]["p2d/aer"] == pytest.approx(want) and "eval/accuracy" in records[-1]
  # A rerun reuses the selection (no new proxy run) and reports the same AER.
  again = p2d.run(c, wd)
  assert again["p2d/aer"] == pytest.approx(want)


def test_gradient_head_scores_read_the_proxy_loss_at_the_start(tmp_path):
  """``p2d.heads=gradient``: |theta dL/dtheta| of the proxy examples at the start, every
  head scored, the top fraction written like ALPS'."""
  from jaxpost.data import generated, tasks

  c = p2d_tiny(**{"p2d.heads": "gradient"})
  start, tok, _ = generated.load_run(c.train.init_from)
  proxy = [tasks.make_problem("mul2x2", "train", 1, i) for i in range(8)]
  selection = p2d._select_heads(c, str(tmp_path), start, tok, proxy)
  chosen = json.load(open(tmp_path / "heads.json"))
  scores = np.asarray(chosen["scores"])
  assert chosen["method"] == "gradient" and scores.shape == (2, 4) and np.all(scores > 0)
  assert sum(map(len, selection.values())) == 2
  top = np.argsort(-scores.reshape(-1), kind="stable")[:2]
  assert sorted((int(i) // 4, int(i) % 4) for i in top) == sorted(
    (layer, h) for layer, hs in selection.items() for h in hs
  )
  assert not (tmp_path / "proxy").exists()  # no proxy run needed


@pytest.mark.parametrize(
  "overrides, match",
  [
    ({"train.init_from": ""}, "init_from"),
    ({"lora.rank": 4}, "lora.rank"),
    ({"p2d.heads": "all"}, "icl"),
    ({"train.heads": "0:1"}, "train.heads"),
    ({"p2d.target": "", "eval.levels": ""}, "p2d.target"),
  ],
)
def test_bad_p2d_configs_are_refused(overrides, match):
  with pytest.raises(config_lib.ConfigError, match=match):
    config_lib.validate(p2d_tiny(**overrides))
