"""The agent-data protocol (jaxpost/data/adp.py): the card's four properties."""

import json
import os
import re

import numpy as np
import pytest

from jaxpost.data import adp, template, tokenizer
from jaxpost.types import ROLE_PROMPT

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TIR = os.path.join(REPO, "configs", "data", "tir_sft.jsonl")


def _tir_records(n):
  with open(TIR, encoding="utf-8") as f:
    return [json.loads(line) for _, line in zip(range(n), f, strict=False)]


def _rich():
  """Every kind of step, two tool calls, reasoning, rewards and web context."""
  return adp.Trajectory(
    id="t1",
    content=[
      adp.TextObservation(content="What is 12*34, and is example.com up?", source="user"),
      adp.CodeAction(language="python", content="print(12*34)", tool_call_id="a",
                     reasoning_content="compute it", description="multiply"),
      adp.TextObservation(content="408", source="environment", tool_call_id="a", reward=0.5),
      adp.ApiAction(function="browse", kwargs={"url": "https://example.com"}, tool_call_id="b"),
      adp.WebObservation(url="https://example.com", axtree="[1] heading 'Example'",
                         tool_call_id="b"),
      adp.MessageAction(content="408; the site is up.", reward=1.0),
    ],
    details={"source": "hand-written"},
    available_code_languages=["python"],
  )  # fmt: skip


def test_raw_to_adp_to_json_to_adp_loses_nothing():
  for i, record in enumerate(_tir_records(20)):
    traj = adp.from_tir(record, f"tir-{i}")
    again = adp.load(adp.dump(traj))
    assert again == traj
    # and back to the raw record's text: the rendering for jaxpost's tool harness
    messages = adp.to_messages(again, "tir")
    assert messages[0] == {"role": "user", "content": record["prompt"], "reasoning": ""}
    assert messages[-1]["content"] == template.parse_response(record["response"]).answer
  rich = _rich()
  assert adp.load(adp.dump(rich)) == rich


@pytest.mark.parametrize(
  "steps, match",
  [
    (  # an observation answering no action
      [adp.TextObservation(content="q", source="user"),
       adp.CodeAction(language="python", content="1", tool_call_id="x"),
       adp.TextObservation(content="1", source="environment", tool_call_id="y")],
      "no earlier action",
    ),
    (  # the same call answered twice
      [adp.TextObservation(content="q", source="user"),
       adp.CodeAction(language="python", content="1", tool_call_id="x"),
       adp.TextObservation(content="1", source="environment", tool_call_id="x"),
       adp.TextObservation(content="1", source="environment", tool_call_id="x")],
      "answered already",
    ),
    (  # a call followed by an observation but no id
      [adp.TextObservation(content="q", source="user"),
       adp.CodeAction(language="python", content="1"),
       adp.TextObservation(content="1", source="environment")],
      "needs a tool_call_id",
    ),
    (  # a call nobody answered
      [adp.TextObservation(content="q", source="user"),
       adp.ApiAction(function="f", tool_call_id="z"), adp.MessageAction(content="done")],
      "never answered",
    ),
  ],
)  # fmt: skip
def test_the_validator_rejects_broken_tool_call_links(steps, match):
  with pytest.raises(ValueError, match=match):
    adp.Trajectory(id="bad", content=steps)


def test_unknown_fields_and_a_message_with_a_tool_call_id_are_rejected():
  good = json.loads(adp.dump(_rich()))
  good["content"][0]["colour"] = "red"
  with pytest.raises(ValueError, match="colour"):
    adp.load(json.dumps(good))
  bad = json.loads(adp.dump(_rich()))
  bad["content"][-1]["tool_call_id"] = "c"
  with pytest.raises(ValueError, match="tool_call_id"):
    adp.load(json.dumps(bad))


@pytest.mark.parametrize("harness", adp.HARNESSES)
def test_each_action_is_one_assistant_message_in_order(harness):
  traj = _rich()
  messages = adp.to_messages(traj, harness)
  assert len(messages) == len(traj.content)
  actions = [s for s in traj.content if isinstance(s, adp.ACTIONS)]
  assistant = [m for m in messages if m["role"] == "assistant"]
  assert len(assistant) == len(actions) == 3
  assert "print(12*34)" in assistant[0]["content"] and "multiply" in assistant[0]["content"]
  assert assistant[0]["reasoning"] == "compute it"
  assert '<function=browse>{"url": "https://example.com"}</function>' in assistant[1]["content"]
  assert assistant[2]["content"] == "408; the site is up."
  roles = [m["role"] for m in messages]
  assert roles == ["user", "assistant", "user", "assistant", "user", "assistant"]
  with pytest.raises(ValueError, match="harness"):
    adp.to_messages(traj, "langchain")


def test_only_agent_turns_carry_loss(tmp_path):
  """Every agent turn is one example's response, each exactly once; observation and user
  text appear only in prompts (ROLE_PROMPT tokens: zero loss weight)."""
  traj = _rich()
  examples = adp.to_examples(traj)
  assert [e.answer for e in examples] == [
    m["content"] for m in adp.to_messages(traj) if m["role"] == "assistant"
  ]
  assert [e.thinking for e in examples] == ["compute it", "", ""]
  assert "408" in examples[1].prompt and examples[1].context[-2][0] == "assistant"
  corpus = [e.prompt + e.thinking + e.answer for e in examples] * 20
  tok = tokenizer.SentencePieceTokenizer.train(corpus, tmp_path / "sp", vocab_size=400)
  observation = "OBSERVATION from environment:\n408"
  for ex in examples[1:]:
    enc = template.encode_example(tok, ex)
    prompt_len = len(template.encode_prompt(tok, ex.prompt))
    assert np.all(enc.roles[:prompt_len] == ROLE_PROMPT)
    assert np.all(enc.roles[prompt_len:] != ROLE_PROMPT)
    assert observation in ex.prompt and observation not in ex.answer


def test_the_adp_source_reads_a_file_and_names_bad_lines(tmp_path):
  path = tmp_path / "trajs.jsonl"
  trajs = [adp.from_tir(r, f"t{i}") for i, r in enumerate(_tir_records(5))]
  path.write_text("".join(adp.dump(t) + "\n" for t in trajs) + '{"id": "x"}\n')
  with pytest.raises(ValueError, match="trajs.jsonl:6"):
    adp.read_adp(str(path))
  examples, where, skipped, units = adp.read_adp(str(path), skip_malformed=True)
  assert skipped == 1 and len(examples) == 2 * 5  # a tool call and an answer each
  assert where(3) == f"{path}:2 (turn 1)"
  assert units == [1, 1, 2, 2, 3, 3, 4, 4, 5, 5]  # each turn's trajectory (its line)


def test_held_out_turns_are_whole_trajectories(tmp_path):
  from jaxpost.data import pipeline, sources

  path = tmp_path / "trajs.jsonl"
  trajs = [adp.from_tir(r, f"t{i}") for i, r in enumerate(_tir_records(40))]
  path.write_text("".join(adp.dump(t) + "\n" for t in trajs))
  dataset = sources.get("adp").read(str(path), "", False)
  train, held = pipeline.split_heldout(dataset, 0.1)
  assert len(held) == 2 * 4 and len(train) == 2 * 36  # 4 of 40 trajectories, both turns
  prompts = lambda d: {d.examples[i].context[0][1] for i in range(len(d))}  # noqa: E731
  assert not prompts(train) & prompts(held)  # no question on both sides


def test_the_rollout_layout_gives_the_raw_tool_trace_back_with_outputs_observed(tmp_path):
  from jaxpost.data.tokenizer import SentencePieceTokenizer
  from jaxpost.tools.tir import OUTPUT_CLOSE, OUTPUT_OPEN
  from jaxpost.types import RESPONSE_ROLES, ROLE_OBSERVED

  records = _tir_records(30)
  examples = [adp.to_rollout(adp.from_tir(r, f"t{i}")) for i, r in enumerate(records)]
  tok = SentencePieceTokenizer.train([template.render_example(e) for e in examples] * 4,
                                     str(tmp_path / "tok"), vocab_size=96,
                                     byte_fallback=False)  # fmt: skip
  for record, ex in zip(records, examples, strict=True):
    assert ex.prompt == record["prompt"]
    assert template.render_response(ex) == record["response"]  # byte for byte
    assert [ex.thinking[a:b] for a, b in ex.observed] == [
      OUTPUT_OPEN + o + OUTPUT_CLOSE for o in re.findall(r"```output\n(.*?)\n```", ex.thinking)
    ] and ex.observed
    enc = template.encode_example(tok, ex)
    observed = enc.roles == ROLE_OBSERVED
    assert tok.decode(enc.tokens[observed].tolist()).replace(" ", "") == "".join(
      ex.thinking[a:b] for a, b in ex.observed
    ).replace(" ", "")
    assert not np.isin(ROLE_OBSERVED, RESPONSE_ROLES)  # never a loss target
    code = ex.thinking[: ex.observed[0][0]]
    assert code.startswith("```python\n") and "print(" in code


def test_the_rollout_layout_refuses_what_it_cannot_hold():
  with pytest.raises(ValueError, match="no place in a python tool rollout"):
    adp.to_rollout(_rich())
  traj = adp.from_tir(_tir_records(1)[0], "t")
  no_answer = traj.model_copy(update={"content": traj.content[:-1]})
  with pytest.raises(ValueError, match="must end with the agent's answer"):
    adp.to_rollout(no_answer)


def test_the_adp_rollout_source_reads_one_example_per_trajectory(tmp_path):
  from jaxpost.data import sources

  path = tmp_path / "trajs.jsonl"
  trajs = [adp.from_tir(r, f"t{i}") for i, r in enumerate(_tir_records(6))]
  path.write_text("".join(adp.dump(t) + "\n" for t in trajs))
  dataset = sources.get("adp_rollout").read(str(path), "", False)
  assert len(dataset) == 6 and list(dataset.units) == [1, 2, 3, 4, 5, 6]
  assert all(ex.observed for ex in dataset.examples)
