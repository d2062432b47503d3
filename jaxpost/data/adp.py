"""Agent trajectories in the Agent Data Protocol's shape (ADP, Song et al. 2025), and
their conversion to training examples with the loss on the agent's turns only.

ADP is an interlingua between agent datasets and agent harnesses: each dataset needs one
converter into it and each harness one renderer out of it. Ours, validated by pydantic
(unknown fields are errors):

  Trajectory    schema_version, id, content: [Action | Observation, ...], details,
                available_custom_tools?, available_code_languages?
  Action        every kind may carry reasoning_content, reward, tool_call_id
    api_action       function, kwargs, description?
    code_action      language, content, description?
    message_action   content, description? (never a tool_call_id)
  Observation   every kind may carry reward, tool_call_id
    text_observation content, source: user | agent | environment, name?
    web_observation  html?, axtree?, url?, viewport_size?

Each item names its kind in a ``kind`` field (our JSON spelling). The trajectory checks
the protocol's two links: an api or code action followed by an observation carries a
``tool_call_id``, and every action's id is answered by exactly one later observation
with that id (a second answer, or an answer to no action, is an error).

``to_messages`` renders a trajectory for a harness (``HARNESSES``): ``openhands`` (the
OpenHands flavour of the authors' converter: code in ``<execute_{language}>`` tags, an
environment's output as a user turn "OBSERVATION from ...") or ``tir`` (jaxpost's tool
use: fenced ```python code, ```output results). ``to_examples`` cuts the rendered turns
into one training example per agent turn, the turns before it as its context: every
agent turn is trained on once, and no observation or user token ever is (the card's
proposal: loss on the agent's turns only). ``reasoning_content`` becomes the turn's think
block. ``data.source=adp`` reads a JSONL file of trajectories this way.

``from_tir`` converts the other way, a jaxpost tool-use record (``prompt`` / ``response``
with fenced code and outputs in its think block, configs/data/tir_sft.jsonl) into a
trajectory: the one raw-dataset converter shipped.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from jaxpost.data.template import Example

SCHEMA_VERSION = "1.0"
HARNESSES = ("openhands", "tir")


class _Item(BaseModel):
  model_config = ConfigDict(extra="forbid")


class ApiAction(_Item):
  kind: Literal["api_action"] = "api_action"
  function: str
  kwargs: dict[str, Any] = Field(default_factory=dict)
  description: str | None = None
  reasoning_content: str | None = None
  reward: float | None = None
  tool_call_id: str | None = None


class CodeAction(_Item):
  kind: Literal["code_action"] = "code_action"
  language: str
  content: str
  description: str | None = None
  reasoning_content: str | None = None
  reward: float | None = None
  tool_call_id: str | None = None


class MessageAction(_Item):
  kind: Literal["message_action"] = "message_action"
  content: str
  description: str | None = None
  reasoning_content: str | None = None
  reward: float | None = None
  tool_call_id: None = None  # a message is never a tool call


class TextObservation(_Item):
  kind: Literal["text_observation"] = "text_observation"
  content: str
  source: Literal["user", "agent", "environment"]
  name: str | None = None
  reward: float | None = None
  tool_call_id: str | None = None


class WebObservation(_Item):
  kind: Literal["web_observation"] = "web_observation"
  html: str | None = None
  axtree: str | None = None
  url: str | None = None
  viewport_size: tuple[int, int] | None = None
  reward: float | None = None
  tool_call_id: str | None = None


ACTIONS = (ApiAction, CodeAction, MessageAction)
OBSERVATIONS = (TextObservation, WebObservation)
Step = Annotated[
  ApiAction | CodeAction | MessageAction | TextObservation | WebObservation,
  Field(discriminator="kind"),
]


class Trajectory(_Item):
  schema_version: str = SCHEMA_VERSION
  id: str
  content: list[Step]
  details: dict[str, Any] = Field(default_factory=dict)
  available_custom_tools: list[Any] | None = None
  available_code_languages: list[str] | None = None

  @model_validator(mode="after")
  def _tool_calls_are_answered_once(self) -> Trajectory:
    pending: dict[str, int] = {}  # action id -> its position, until answered
    seen: set[str] = set()
    for i, step in enumerate(self.content):
      if isinstance(step, ApiAction | CodeAction):
        nxt = self.content[i + 1] if i + 1 < len(self.content) else None
        if isinstance(nxt, OBSERVATIONS) and step.tool_call_id is None:
          raise ValueError(
            f"content[{i}]: a {step.kind} followed by an observation needs a tool_call_id"
          )
        if step.tool_call_id is not None:
          if step.tool_call_id in seen:
            raise ValueError(f"content[{i}]: tool_call_id {step.tool_call_id!r} is used twice")
          seen.add(step.tool_call_id)
          pending[step.tool_call_id] = i
      elif isinstance(step, OBSERVATIONS) and step.tool_call_id is not None:
        if step.tool_call_id not in pending:
          raise ValueError(
            f"content[{i}]: observation of tool_call_id {step.tool_call_id!r}, which no "
            "earlier action is waiting for (unknown, or answered already)"
          )
        del pending[step.tool_call_id]
    if pending:
      ids = ", ".join(repr(k) for k in pending)
      raise ValueError(f"tool calls never answered by an observation: {ids}")
    return self


def load(line: str) -> Trajectory:
  """One trajectory from its JSON text (raises ``ValueError`` naming what is wrong)."""
  try:
    return Trajectory.model_validate_json(line)
  except ValidationError as e:
    raise ValueError(str(e)) from None


def dump(trajectory: Trajectory) -> str:
  """Its JSON text, one line, fields unset by the data left out."""
  return trajectory.model_dump_json(exclude_none=True)


# ------------------------------------------------------------------------ rendering


def _render_action(step, harness: str) -> str:
  lead = f"{step.description}\n" if step.description else ""
  if isinstance(step, MessageAction):
    return step.content
  if isinstance(step, CodeAction):
    if harness == "tir":
      return f"{lead}```{step.language}\n{step.content}\n```"
    return f"{lead}<execute_{step.language}>\n{step.content}\n</execute_{step.language}>"
  args = json.dumps(step.kwargs, sort_keys=True, ensure_ascii=False)
  return f"{lead}<function={step.function}>{args}</function>"


def _render_observation(step) -> tuple[str, str]:
  """(role, text) of an observation: a user's words stay a user turn."""
  if isinstance(step, TextObservation):
    if step.source == "user":
      return "user", step.content
    return "user", f"OBSERVATION from {step.name or step.source}:\n{step.content}"
  parts = [f"url: {step.url}"] if step.url else []
  parts += [step.axtree or step.html or ""]
  return "user", "OBSERVATION from the browser:\n" + "\n".join(p for p in parts if p)


def to_messages(trajectory: Trajectory, harness: str = "openhands") -> list[dict[str, str]]:
  """The trajectory as chat turns ``{"role", "content", "reasoning"}``: one assistant
  turn per action, in order; observations are user turns (``tir``: environment output
  as a fenced ```output block)."""
  if harness not in HARNESSES:
    raise ValueError(f"harness {harness!r}; expected one of {HARNESSES}")
  out = []
  for step in trajectory.content:
    if isinstance(step, ACTIONS):
      text = _render_action(step, harness)
      out.append({"role": "assistant", "content": text, "reasoning": step.reasoning_content or ""})
    elif harness == "tir" and isinstance(step, TextObservation) and step.source == "environment":
      out.append({"role": "user", "content": f"```output\n{step.content}\n```", "reasoning": ""})
    else:
      role, text = _render_observation(step)
      out.append({"role": role, "content": text, "reasoning": ""})
  return out


def to_examples(trajectory: Trajectory, harness: str = "openhands") -> list[Example]:
  """One example per assistant turn: that turn is the response (its reasoning the think
  block), every turn before it the context. A trajectory must open with a user turn."""
  messages = to_messages(trajectory, harness)
  if not messages or messages[0]["role"] != "user":
    raise ValueError(f"trajectory {trajectory.id!r} must start with a user turn (an observation)")
  out = []
  for i, m in enumerate(messages):
    if m["role"] != "assistant":
      continue
    context = tuple((t["role"], _turn_text(t)) for t in messages[:i])
    prompt = context[0][1] if len(context) == 1 else _plain(context)
    out.append(
      Example(prompt=prompt, thinking=m["reasoning"], answer=m["content"], context=context)
    )
  return out


def to_rollout(trajectory: Trajectory) -> Example:
  """The trajectory as one example in the layout of jaxpost's own tool rollouts
  (``jaxpost/tools/tir.py``): the user's question as the prompt; in the think block each
  code action's reasoning and fenced code, then its output as the harness writes it
  (``tool_text``'s fence), marked ``observed`` (read, never trained on, as RL's tool
  turns); the final message as the answer. Only python code actions and text
  observations have a place in that layout: anything else is an error."""
  from jaxpost.tools.tir import CODE_END, OUTPUT_CLOSE, OUTPUT_OPEN

  steps = list(trajectory.content)
  first, last = steps[0] if steps else None, steps[-1] if steps else None
  if not (isinstance(first, TextObservation) and first.source == "user"):
    raise ValueError(f"trajectory {trajectory.id!r} must start with the user's question")
  if not isinstance(last, MessageAction):
    raise ValueError(f"trajectory {trajectory.id!r} must end with the agent's answer (a message)")
  thinking, observed = "", []
  for step in steps[1:-1]:
    if isinstance(step, CodeAction) and step.language == "python":
      thinking += f"{step.reasoning_content}\n" if step.reasoning_content else ""
      thinking += f"```python\n{step.content}{CODE_END}"
    elif isinstance(step, TextObservation) and step.source == "environment":
      start = len(thinking)
      thinking += f"{OUTPUT_OPEN}{step.content}{OUTPUT_CLOSE}"
      observed.append((start, len(thinking)))
    else:
      raise ValueError(
        f"trajectory {trajectory.id!r}: a {step.kind} has no place in a python tool rollout"
      )
  if last.reasoning_content:
    thinking += last.reasoning_content
  return Example(prompt=first.content, thinking=thinking, answer=last.content,
                 observed=tuple(observed))  # fmt: skip


def _turn_text(turn: dict) -> str:
  if turn["role"] == "assistant" and turn["reasoning"]:
    return f"<think>{turn['reasoning']}</think>{turn['content']}"
  return turn["content"]


def _plain(context: Sequence[tuple[str, str]]) -> str:
  names = {"user": "User", "assistant": "Assistant", "system": "System"}
  return "\n".join(f"{names[role]}: {text}" for role, text in context)


# ------------------------------------------------------------------------- converters

_FENCE = re.compile(r"```python\n(.*?)\n```\n```output\n(.*?)\n```\n?", re.S)


def from_tir(record: dict, trajectory_id: str) -> Trajectory:
  """A jaxpost tool-use record (``{"prompt", "response"}``, the response's think block
  holding fenced python code and its fenced output, then the answer) as a trajectory:
  the user's question, a code action and the environment's output per tool call, and
  the final answer as a message."""
  from jaxpost.data.template import parse_response

  parsed = parse_response(record["response"])
  if not parsed.format_ok:
    raise ValueError(f"{trajectory_id}: the response's think block is malformed")
  steps: list[Any] = [TextObservation(content=record["prompt"], source="user")]
  at = 0
  for n, m in enumerate(_FENCE.finditer(parsed.thinking)):
    between = parsed.thinking[at : m.start()].strip()
    call = f"{trajectory_id}-call{n}"
    steps.append(CodeAction(language="python", content=m.group(1), tool_call_id=call,
                            reasoning_content=between or None))  # fmt: skip
    steps.append(TextObservation(content=m.group(2), source="environment", tool_call_id=call))
    at = m.end()
  rest = parsed.thinking[at:].strip()
  steps.append(MessageAction(content=parsed.answer, reasoning_content=rest or None))
  return Trajectory(id=trajectory_id, content=steps, details={"converted_from": "jaxpost-tir"})


def read_adp(path: str, *, harness: str = "openhands", skip_malformed: bool = False):
  """(examples, where, skipped, units) of a JSONL file of trajectories (one per line):
  ``units[i]`` is the line of example i's trajectory (its turns are held out together).
  ``harness``: one of ``HARNESSES`` (one example per agent turn), or ``rollout`` (one
  example per trajectory, ``to_rollout``)."""
  from jaxpost.data.jsonl import DataError

  examples, places, skipped, units = [], [], 0, []
  with open(path, encoding="utf-8") as f:
    for number, line in enumerate(f, 1):
      if not line.strip():
        continue
      try:
        traj = load(line)
        turns = [to_rollout(traj)] if harness == "rollout" else to_examples(traj, harness)
      except ValueError as e:
        if not skip_malformed:
          raise DataError(f"{path}:{number}: {e}") from None
        skipped += 1
        continue
      examples += turns
      places += [f"{path}:{number} (turn {k})" for k in range(len(turns))]
      units += [number] * len(turns)
  if not examples:
    raise DataError(f"{path} holds no agent trajectory with an agent turn")
  return examples, places.__getitem__, skipped, units


def main(argv=None) -> None:
  """``python -m jaxpost.data.adp --from_tir=IN.jsonl --out=OUT.jsonl [--n=N]``."""
  import argparse

  p = argparse.ArgumentParser(description="Convert jaxpost tool-use records to ADP trajectories")
  p.add_argument("--from_tir", required=True, help="a JSONL of {prompt, response} tool-use records")
  p.add_argument("--out", required=True)
  p.add_argument("--n", type=int, default=0, help="the first n records (0 = all)")
  a = p.parse_args(argv)
  written = 0
  with open(a.from_tir, encoding="utf-8") as f, open(a.out, "w", encoding="utf-8") as out:
    for number, line in enumerate(f, 1):
      if a.n and written >= a.n:
        break
      if line.strip():
        out.write(dump(from_tir(json.loads(line), f"tir-{number}")) + "\n")
        written += 1
  print(json.dumps({"out": a.out, "trajectories": written}))


if __name__ == "__main__":
  main()
