"""Stop control at evaluation (``eval.stop_bias``, ``eval.force_after``) and the tokens
metric: training-free length control as the evaluator applies it."""

import numpy as np
import pytest
from flax import nnx

from jaxpost import config_lib, models
from jaxpost.data import tasks, template
from jaxpost.data.tokenizer import SentencePieceTokenizer
from jaxpost.eval import accuracy


@pytest.fixture(scope="module")
def setup(tmp_path_factory, random_decoder):
  texts = [template.render_example(template.Example(p.prompt, p.thinking, p.answer))
           for p in (tasks.make_problem("add3", "train", 0, i) for i in range(300))]  # fmt: skip
  tok = SentencePieceTokenizer.train(texts, str(tmp_path_factory.mktemp("tok") / "tok"),
                                     vocab_size=48, byte_fallback=False)  # fmt: skip
  cfg = models.named_config("tiny", vocab_size=tok.vocab_size, n_layers=2, d_model=32,
                            mlp_dim=48, n_heads=4, n_kv_heads=2, head_dim=8)  # fmt: skip
  from flax import nnx

  graphdef, state = nnx.split(random_decoder(cfg))
  return tok, graphdef, state


def _evaluate(setup, **kw):
  tok, graphdef, state = setup
  ev = accuracy.Evaluator(graphdef, tok, num_examples=16, batch_size=16, max_new_tokens=24, **kw)
  result = ev.evaluate_level(state, "add3")
  return result, ev.responses(state, [p.prompt for p in ev.problems("add3")]), ev._lengths


def test_the_tokens_metric_and_a_stop_bias_that_ends_answers_at_once(setup):
  plain, _, lengths = _evaluate(setup)
  m = accuracy.as_metrics({"add3": plain})
  assert m["eval/tokens/add3"] == pytest.approx(np.mean(lengths)) and m["eval/tokens/add3"] > 1
  same, _, _ = _evaluate(setup, stop_bias=0.0, force_after=0)
  assert same == plain
  short, _, lengths = _evaluate(setup, stop_bias=100.0)
  # Every answer ends at once: EOS first, or the (one-token, also raised) close tag then EOS.
  assert max(lengths) <= 2 and short.mean_tokens < 1.5


def test_the_last_number_metric_scores_the_same_responses_leniently(setup):
  result, responses, _ = _evaluate(setup)
  problems = accuracy.Evaluator(setup[1], setup[0], num_examples=16, batch_size=16,
                                max_new_tokens=24).problems("add3")  # fmt: skip
  expected = np.mean(
    [tasks.check_last_number(p, r) for p, r in zip(problems, responses, strict=True)]
  )
  m = accuracy.as_metrics({"add3": result})
  assert m["eval/last_number/add3"] == result.last_number == pytest.approx(expected)
  assert result.last_number >= result.accuracy  # exact-match answers' last number is right


def test_budget_forcing_writes_the_close_tag_once_the_budget_is_spent(setup):
  tok = setup[0]
  close = tok.encode(template.THINK_CLOSE)
  _, responses, lengths = _evaluate(setup, force_after=4)
  for text, n in zip(responses, lengths, strict=True):
    if n >= 4 + len(close):
      assert template.THINK_CLOSE in text, text


def test_the_eval_fields_are_config_fields():
  c = config_lib.load_config(f"{config_lib.CONFIGS_DIR}/sft.py:tiny")
  config_lib.set_field(c, "eval.stop_bias", 2.0)
  config_lib.set_field(c, "eval.force_after", 16)
  config_lib.validate(c)
  config_lib.set_field(c, "eval.force_after", -1)
  with pytest.raises(config_lib.ConfigError, match="force_after"):
    config_lib.validate(c)


def test_a_prompt_prefix_reaches_every_prompt(setup, monkeypatch):
  tok, graphdef, state = setup
  ev = accuracy.Evaluator(
    graphdef, tok, num_examples=4, batch_size=4, max_new_tokens=4, prompt_prefix="1+",
    prompt_suffix="+2",
  )  # fmt: skip
  seen = []
  real = ev.responses
  monkeypatch.setattr(ev, "responses", lambda s, prompts: seen.extend(prompts) or real(s, prompts))
  ev.evaluate_level(state, "add3")
  assert seen == ["1+" + p.prompt + "+2" for p in ev.problems("add3")]


def test_the_eval_cli_evaluates_a_run_under_options(tmp_path, capsys):
  import json

  from jaxpost.eval.__main__ import main

  out = tmp_path / "ev.json"
  flags = ["zoo:tiny-sft", "--levels=add3", "--set", "eval.num_examples=8", "--set",
           "eval.batch_size=8"]  # fmt: skip
  assert main([*flags, "--set", "eval.stop_bias=100.0", f"--out={out}"]) == 0
  result = json.loads(out.read_text())
  assert result["options"]["eval.stop_bias"] == 100.0
  assert result["levels"]["add3"]["n"] == 8 and result["levels"]["add3"]["mean_tokens"] <= 2
  assert "add3" in capsys.readouterr().out
  with pytest.raises(ValueError, match="eval.stop_bias"):
    main([*flags, "--set", "optim.lr=1"])


def test_the_eval_cli_reads_a_run_at_an_early_exit(monkeypatch):
  """``--exit=N`` decodes with the first N blocks and the run's own final norm and head."""
  from jaxpost.eval import __main__ as cli

  kept, keep = [], cli.models.keep_layers

  def spy(model, indices):
    model = keep(model, indices)
    kept.append((list(indices), model.config.n_layers, len(model.layers)))
    return model

  monkeypatch.setattr(cli.models, "keep_layers", spy)
  options = {"eval.num_examples": 4, "eval.batch_size": 4, "eval.max_new_tokens": 4}
  full = cli.evaluate_run("zoo:tiny-sft", ["add3"], options)
  early = cli.evaluate_run("zoo:tiny-sft", ["add3"], options, exit_layer=1)
  assert full["add3"]["n"] == early["add3"]["n"] == 4
  assert kept == [([0], 1, 1)]  # only the early read drops blocks: one left of tiny's 2
  with pytest.raises(ValueError, match="blocks 1.."):
    cli.evaluate_run("zoo:tiny-sft", ["add3"], options, exit_layer=99)


def test_pass_at_k_samples_k_per_problem_and_near_greedy_matches_greedy():
  from jaxpost.data import generated

  model, tok, _ = generated.load_run("zoo:tiny-sft")
  graphdef, state = nnx.split(model)
  kw = dict(num_examples=6, batch_size=8, max_new_tokens=12)
  near_greedy = accuracy.Evaluator(graphdef, tok, pass_k=4, sample_temperature=1e-4, **kw)
  r = near_greedy.evaluate_level(state, "add3")
  drawn = near_greedy.samples(state, [p.prompt for p in near_greedy.problems("add3")], 4)
  assert [len(x) for x in drawn] == [4] * 6
  greedy = near_greedy.responses(state, [p.prompt for p in near_greedy.problems("add3")])
  assert all(set(x) == {g} for x, g in zip(drawn, greedy, strict=True))  # T -> 0: greedy
  assert r.pass_k == r.accuracy and r.distinct == 1.0
  hot = accuracy.Evaluator(graphdef, tok, pass_k=4, sample_temperature=3.0, **kw)
  r_hot = hot.evaluate_level(state, "add3")
  assert r_hot.distinct > 1.0  # a hot, barely trained model answers differently
  metrics = accuracy.as_metrics({"add3": r_hot})
  assert metrics["eval/pass_k/add3"] == r_hot.pass_k
