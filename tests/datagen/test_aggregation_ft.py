"""Aggregation fine-tuning (jaxpost/datagen/aggregate.py): the card's four properties."""

import json

import numpy as np
import pytest

from jaxpost.data import jsonl, tasks, template
from jaxpost.data.tokenizer import SentencePieceTokenizer
from jaxpost.datagen import aggregate
from jaxpost.types import ROLE_PROMPT


@pytest.mark.parametrize("style", aggregate.STYLES)
def test_proposals_are_numbered_in_order(style):
  text = aggregate.aggregation_prompt("12*34", ["a", "b", "c"], style)
  marks = ["1. a", "2. b", "3. c"] if style == "chat" else ["1:a", "2:b", "3:c"]
  at = [text.index(m) for m in marks]
  assert at == sorted(at) and "12*34" in text
  if style == "compact":
    assert text == "12*34\n1:a\n2:b\n3:c"
  else:
    assert text.startswith(aggregate.INSTRUCTION) and text.endswith("Query: 12*34")


class Counter:
  """A sampler that records its prompts and answers with the layer it was asked in."""

  def __init__(self):
    self.prompts = []

  def __call__(self, prompts):
    self.prompts += prompts
    return [f"s{len(self.prompts) - len(prompts) + i}" for i in range(len(prompts))]


@pytest.mark.parametrize("n, layers", [(5, 1), (5, 2), (3, 3), (1, 1)])
def test_samples_per_query_are_n_times_layers_plus_one(n, layers):
  sample = Counter()
  answers, props = aggregate.propose_and_aggregate(sample, ["q"], n=n, num_aggregation=layers)
  assert len(sample.prompts) == n * layers + 1
  assert len(props) == layers and all(len(p[0]) == n for p in props)
  assert sample.prompts[:n] == ["q"] * n  # the proposers see the plain query
  # each later layer aggregates the layer before it; the final head the last one
  for layer in range(1, layers):
    assert sample.prompts[n * layer] == aggregate.aggregation_prompt("q", props[layer - 1][0])
  assert sample.prompts[-1] == aggregate.aggregation_prompt("q", props[-1][0])
  assert answers == [f"s{n * layers}"]
  # several queries: the same per query, one call per layer
  sample = Counter()
  answers, props = aggregate.propose_and_aggregate(sample, ["a", "b"], n=n, num_aggregation=layers)
  assert len(sample.prompts) == 2 * (n * layers + 1) and len(answers) == 2
  assert sample.prompts[:n] == ["a"] * n and sample.prompts[n : 2 * n] == ["b"] * n


def test_one_layer_is_the_proposer_and_the_final_head_only():
  sample = Counter()
  aggregate.propose_and_aggregate(sample, ["q"], n=4, num_aggregation=1)
  assert sample.prompts[:4] == ["q"] * 4
  assert sample.prompts[4:] == [aggregate.aggregation_prompt("q", ["s0", "s1", "s2", "s3"])]
  with pytest.raises(ValueError, match="num_aggregation"):
    aggregate.propose_and_aggregate(sample, ["q"], n=4, num_aggregation=0)


def test_the_loss_mask_excludes_the_proposals(tmp_path):
  mix = tasks.mixture({"mul2x2": 1.0}, "train", 2)
  ps = [mix.problem_at(i) for i in range(3)]
  props = [[f"<think>{p.thinking}</think>{int(p.answer) + k}" for k in (0, 1)] for p in ps]
  recs = aggregate.records(ps, props, "compact")
  assert [r["provenance"]["proposals_correct"] for r in recs] == [[True, False]] * 3
  path = tmp_path / "aft.jsonl"
  path.write_text("".join(json.dumps(r) + "\n" for r in recs))
  examples = jsonl.read_jsonl(str(path)).examples
  corpus = [e.prompt + e.thinking + e.answer for e in examples] * 30
  tok = SentencePieceTokenizer.train(corpus, tmp_path / "sp", vocab_size=60, byte_fallback=False)
  for ex, p, pr in zip(examples, ps, props, strict=True):
    assert ex == template.Example(aggregate.aggregation_prompt(p.prompt, pr, "compact"),
                                  p.thinking, p.answer)  # fmt: skip
    enc = template.encode_example(tok, ex)
    n_prompt = len(template.encode_prompt(tok, ex.prompt))
    assert np.all(enc.roles[:n_prompt] == ROLE_PROMPT)  # every proposal token: no loss
    assert np.all(enc.roles[n_prompt:] != ROLE_PROMPT)


def test_the_shipped_dataset_matches_its_manifest():
  import os

  from jaxpost.config_lib import load_config
  from jaxpost.datagen import core

  repo = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  folder = os.path.join(repo, "configs", "data", "aft_mul2x2")
  manifest = core.read_manifest(folder)
  assert manifest["method"] == "aggregate" and manifest["inputs"]["proposals"] == 4
  examples = jsonl.read_jsonl(os.path.join(folder, core.DATA_FILE)).examples
  assert len(examples) == 256 and all(e.prompt.count("\n") == 4 for e in examples)
  c = load_config(os.path.join(repo, "configs", "aft.py:tiny"))
  assert c.data.path == os.path.join(folder, core.DATA_FILE)
