"""A model's own responses to a prompts file (jaxpost/datagen/responses.py) and the
teacher-forced loss of such a file under a finished run (``jaxpost.eval --heldout``)."""

import json
import math

import jax
import numpy as np
import pytest

from jaxpost.data import generated, tasks, template
from jaxpost.datagen import core, responses
from jaxpost.eval import __main__ as cli
from jaxpost.types import RESPONSE_ROLES, ROLE_ANSWER

RUN = "zoo:tiny-sft"


def test_prompts_file_and_the_records_of_the_responses(tmp_path, monkeypatch):
  """Every prompt's response in order, empty ones dropped and counted, the author named
  in each record (the generation itself is core.Writer's, tested with the builders)."""
  path = tmp_path / "prompts.txt"
  path.write_text("\nName a colour.\n  \nWhat is 2+2?\nSay nothing.\n")
  prompts = responses.read_prompts(str(path))
  assert prompts == ["Name a colour.", "What is 2+2?", "Say nothing."]
  said = {"Name a colour.": "Blue.", "What is 2+2?": "4", "Say nothing.": "  "}

  class Writer:
    def __init__(self, author, **settings):
      self.cost = core.Cost(prompts=0)

    def __call__(self, batch):
      self.cost.prompts += len(batch)
      return [said[p] for p in batch]

  monkeypatch.setattr(core, "Writer", Writer)
  author = core.Author(model=None, tok=None, name="zoo:x", step=7)
  manifest = responses.build(author, prompts, str(tmp_path / "out"), source=str(path))
  records = [json.loads(line) for line in open(tmp_path / "out" / core.DATA_FILE)]
  assert [(r["prompt"], r["response"]) for r in records] == [
    ("Name a colour.", "Blue."), ("What is 2+2?", "4")
  ]  # fmt: skip
  assert [r["provenance"] for r in records] == [
    {"model": "zoo:x", "step": 7, "index": 0}, {"model": "zoo:x", "step": 7, "index": 1}
  ]  # fmt: skip
  assert manifest["counts"] == {"records": 2, "empty": 1}
  assert manifest["inputs"]["prompts"] == str(path) and manifest["method"] == "responses"
  (tmp_path / "none.txt").write_text("\n \n")
  with pytest.raises(ValueError, match="no prompts"):
    responses.read_prompts(str(tmp_path / "none.txt"))


def test_heldout_loss_is_the_mean_nll_of_the_response_tokens(tmp_path):
  """``--heldout``'s loss against a direct per-example forward: the mean over every
  response token (think, answer, EOS) of -log p(token | everything before it)."""
  mix = tasks.mixture({"add3": 1.0}, "train", 3)
  examples = [mix.problem_at(i).example for i in range(6)]
  path = tmp_path / "held.jsonl"
  with open(path, "w") as f:
    for ex in examples:
      f.write(json.dumps({"prompt": ex.prompt, "response": template.render_response(ex)}) + "\n")
  options = {"eval.batch_size": 4}
  response = cli.evaluate_run(RUN, [], options, heldout_path=str(path))["heldout"]
  answer = cli.evaluate_run(RUN, [], options, heldout_path=str(path), heldout_span="answer")
  model, tok, _ = generated.load_run(RUN)
  encoded = [template.encode_example(tok, ex) for ex in examples]
  width = max(len(e.tokens) for e in encoded)
  # one causal forward of every example, padded at its end (no token sees the padding)
  rows = np.asarray([list(e.tokens) + [tok.pad_id] * (width - len(e.tokens)) for e in encoded])
  logp = np.asarray(jax.nn.log_softmax(model(rows), axis=-1))
  for got, roles in ((response, RESPONSE_ROLES), (answer["heldout"], (ROLE_ANSWER,))):
    nll = [
      -row[t, enc.tokens[t + 1]]
      for row, enc in zip(logp, encoded, strict=True)
      for t in range(len(enc.tokens) - 1)
      if enc.roles[t + 1] in roles
    ]
    assert got["n"] == 6
    np.testing.assert_allclose(got["loss"], np.mean(nll), rtol=1e-4)
    np.testing.assert_allclose(got["perplexity"], math.exp(np.mean(nll)), rtol=1e-4)
  assert answer["heldout"]["loss"] != response["loss"]  # the trace's tokens left out
  with pytest.raises(ValueError, match="heldout_span"):
    cli.evaluate_run(RUN, [], options, heldout_path=str(path), heldout_span="think")
