"""Prompt/response template with explicit reasoning and answer spans.

Every example is rendered as

    Q: {prompt}\\nA: <think>{thinking}</think>{answer}<eos>

The prompt, the think tags, the reasoning and the answer are tokenized *separately*
and concatenated, so the role of every token (``ROLE_PROMPT``/``ROLE_THINK``/
``ROLE_ANSWER`` from ``jaxpost.types``) is exact: a merge across a span boundary can
never blur which span a token belongs to. The tokenizers we train guarantee that
``decode(encode(a) + encode(b)) == a + b``, so the separate encoding loses nothing.

The response always carries a think block, even an empty one, so a model trained on
mixed data has a single output format.

A tokenizer with a ``chat_template`` (an instruct model's, from GGUF metadata or
``tokenizer_config.json``) replaces the ``Q: ...\nA: `` prompt: the prompt becomes the
model's own rendering of the conversation (one user turn, or an `Example`'s
``context`` turns) ending in the opening of an assistant turn, and the response
spans follow as above, closed by the tokenizer's EOS (the end-of-turn token of chat
models, e.g. ``<|im_end|>``). Only the final assistant message is the loss span;
earlier assistant turns are context (ROLE_PROMPT).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

import numpy as np

from jaxpost.types import ROLE_ANSWER, ROLE_MARKED, ROLE_OBSERVED, ROLE_PROMPT, ROLE_THINK

if TYPE_CHECKING:
  from jaxpost.data.tokenizer import Tokenizer

THINK_OPEN = "<think>"
THINK_CLOSE = "</think>"

# Short on purpose: tiny models on CPU pay for every template token.
_PROMPT_PREFIX = "Q: "
_PROMPT_SUFFIX = "\nA: "

# Chat roles accepted by `render_messages`, and the tag each gets in a rendered prompt.
CHAT_ROLES = {"system": "System", "user": "User", "assistant": "Assistant"}


@dataclasses.dataclass(frozen=True)
class Example:
  """One supervised example: a prompt and a response split into reasoning and answer.

  Attributes:
    prompt: the task text, without template decoration.
    thinking: the reasoning that goes inside ``<think>...</think>`` (may be empty).
    answer: the final answer after the think block.
    context: for chat data, the ``(role, content)`` turns before the answer; a
      tokenizer with a chat template renders them instead of ``prompt`` (which holds
      their plain-text rendering, `render_messages`). Empty: one user turn, ``prompt``.
    marks: ``(start, end)`` character spans of ``thinking`` whose tokens get
      ``ROLE_MARKED`` (noise or an undesirable span the data knows of, e.g. injected by
      ``data.corrupt``); sorted, disjoint. Each span is tokenised on its own.
    observed: spans of ``thinking`` the model read but did not write (a tool's output
      in a tool-use trace): ``ROLE_OBSERVED`` tokens, never trained on; sorted, disjoint
      from each other and from ``marks``, each tokenised on its own.
  """

  prompt: str
  thinking: str
  answer: str
  context: tuple[tuple[str, str], ...] = ()
  marks: tuple[tuple[int, int], ...] = ()
  observed: tuple[tuple[int, int], ...] = ()


@dataclasses.dataclass(frozen=True)
class Response:
  """A parsed model response (see `parse_response`).

  Attributes:
    text: the full response text that was parsed.
    thinking: the reasoning inside the think block ("" when there is none or the
      block is malformed).
    answer: the text after the think block; the whole text when there are no think
      tags at all; "" when the tags are malformed (an answer is only trusted when the
      format is unambiguous).
    format_ok: True when the response starts with one well-formed think block.
    finished: True when generation stopped at EOS (only set by `decode_response`).
  """

  text: str
  thinking: str
  answer: str
  format_ok: bool
  finished: bool = True


@dataclasses.dataclass
class Encoded:
  """A tokenized example with the role of each token.

  Attributes:
    tokens: i32[T] token ids.
    roles: i32[T] ROLE_PROMPT / ROLE_THINK / ROLE_ANSWER of each token. The think tags
      count as THINK, BOS as PROMPT and EOS as ANSWER.
  """

  tokens: np.ndarray
  roles: np.ndarray

  def __post_init__(self):
    if self.tokens.shape != self.roles.shape or self.tokens.ndim != 1:
      raise ValueError(
        f"tokens and roles must be 1-D and the same shape, got {self.tokens.shape} and "
        f"{self.roles.shape}"
      )

  def __len__(self) -> int:
    return int(self.tokens.shape[0])

  @property
  def prompt_len(self) -> int:
    """Number of leading prompt tokens (the generation prefix)."""
    return int(np.sum(self.roles == ROLE_PROMPT))


def _tag_error(response: str) -> str | None:
  """Why ``response`` is not `no tags` or `one leading think block`; None if fine."""
  n_open = response.count(THINK_OPEN)
  n_close = response.count(THINK_CLOSE)
  if n_open == 0 and n_close == 0:
    return None
  if n_open == 0:
    return f"{THINK_CLOSE!r} without an opening {THINK_OPEN!r}"
  if n_close == 0:
    return f"{THINK_OPEN!r} without a closing {THINK_CLOSE!r}"
  if n_open > 1 or n_close > 1:
    return f"more than one think block ({n_open} x {THINK_OPEN!r}, {n_close} x {THINK_CLOSE!r})"
  if not response.startswith(THINK_OPEN):
    return f"text before {THINK_OPEN!r}; the think block must start the response"
  return None


def split_response(response: str) -> tuple[str, str]:
  """Splits ``"<think>X</think>Y"`` into ``(X, Y)``.

  Args:
    response: a response text.

  Returns:
    ``(thinking, answer)``; ``("", response)`` when there are no think tags at all.

  Raises:
    ValueError: the think tags are malformed (unclosed, unopened, repeated, or not at
      the start of the response).
  """
  error = _tag_error(response)
  if error is not None:
    raise ValueError(f"malformed think block: {error} in response {_preview(response)}")
  if THINK_OPEN not in response:
    return "", response
  thinking, answer = response[len(THINK_OPEN) :].split(THINK_CLOSE, 1)
  return thinking, answer


def parse_response(text: str, *, finished: bool = True) -> Response:
  """Parses a (generated) response leniently: never raises, reports ``format_ok``.

  Args:
    text: the response text.
    finished: whether generation ended at EOS; recorded on the result.

  Returns:
    A `Response`. Only a response that starts with exactly one well-formed think
    block is ``format_ok``. Without any tags the whole text is the answer.
  """
  if _tag_error(text) is not None:
    return Response(text=text, thinking="", answer="", format_ok=False, finished=finished)
  thinking, answer = split_response(text)
  return Response(
    text=text,
    thinking=thinking,
    answer=answer,
    format_ok=text.startswith(THINK_OPEN),
    finished=finished,
  )


def render_prompt(prompt: str) -> str:
  """The text the model is conditioned on."""
  return f"{_PROMPT_PREFIX}{prompt}{_PROMPT_SUFFIX}"


def render_response(ex: Example) -> str:
  """``"<think>{thinking}</think>{answer}"`` (the block is kept even when empty)."""
  return f"{THINK_OPEN}{ex.thinking}{THINK_CLOSE}{ex.answer}"


def render_example(ex: Example) -> str:
  """Prompt and response as one string (e.g. for tokenizer training)."""
  return render_prompt(ex.prompt) + render_response(ex)


def _check_span(name: str, text: str) -> None:
  if not isinstance(text, str):
    raise TypeError(f"Example.{name} must be str, got {type(text).__name__}")
  if THINK_OPEN in text or THINK_CLOSE in text:
    raise ValueError(
      f"Example.{name} contains a think tag, which would break the span structure: {_preview(text)}"
    )


def _piece(tok: Tokenizer, i: int) -> str:
  return tok.id_to_piece(i) if i >= 0 else ""


def render_chat_prompt(
  tok: Tokenizer, prompt: str, context: Sequence[tuple[str, str]] = ()
) -> str | None:
  """The chat-template rendering of a prompt (None when ``tok`` has no template).

  The conversation is ``context`` when given, else one user turn ``prompt``; it ends
  with the template's generation prompt (the opening of the assistant's turn).
  """
  chat_template = getattr(tok, "chat_template", None)
  if not chat_template:
    return None
  from jaxpost.data.chat import render_chat

  turns = context or (("user", prompt),)
  return render_chat(
    chat_template,
    [{"role": role, "content": content} for role, content in turns],
    add_generation_prompt=True,
    bos_token=_piece(tok, tok.bos_id),
    eos_token=_piece(tok, tok.eos_id),
  )


def encode_prompt(
  tok: Tokenizer,
  prompt: str,
  *,
  add_bos: bool | None = None,
  context: Sequence[tuple[str, str]] = (),
) -> list[int]:
  """Token ids of the rendered prompt; exactly the prefix `encode_example` produces.

  With a chat template (``tok.chat_template``) the prompt is the template's rendering
  (`render_chat_prompt`); otherwise ``"Q: {prompt}\nA: "``.

  Args:
    tok: the tokenizer.
    prompt: the raw prompt (template decoration is added here).
    add_bos: prepend ``tok.bos_id`` (unless the rendering already starts with it);
      None = the tokenizer's ``add_bos`` for plain prompts, never for chat prompts
      (templates print their BOS themselves).
    context: chat turns that replace ``prompt`` under a chat template.

  Raises:
    ValueError: ``add_bos`` but the tokenizer has no BOS token.
  """
  if not isinstance(prompt, str):
    raise TypeError(f"prompt must be str, got {type(prompt).__name__}")
  chat = render_chat_prompt(tok, prompt, context)
  if chat is not None:
    ids = list(tok.encode(chat))
    add_bos = bool(add_bos)
  else:
    ids = list(tok.encode(render_prompt(prompt)))
    add_bos = getattr(tok, "add_bos", False) if add_bos is None else add_bos
  if add_bos:
    if tok.bos_id < 0:
      raise ValueError("add_bos=True but the tokenizer defines no BOS token")
    if not ids or ids[0] != tok.bos_id:
      ids = [tok.bos_id, *ids]
  return ids


def encode_example(
  tok: Tokenizer, ex: Example, *, add_bos: bool | None = None, add_eos: bool = True
) -> Encoded:
  """Tokenizes an example span by span and labels every token with its role.

  Args:
    tok: the tokenizer.
    ex: the example; ``thinking`` and ``answer`` must not contain think tags.
    add_bos: prepend BOS (role PROMPT); None = as `encode_prompt` decides.
    add_eos: append EOS (role ANSWER), so the model learns to stop.

  Returns:
    The `Encoded` tokens and roles.
  """
  _check_span("thinking", ex.thinking)
  _check_span("answer", ex.answer)
  if add_eos and tok.eos_id < 0:
    raise ValueError("add_eos=True but the tokenizer defines no EOS token")
  spans = [
    (encode_prompt(tok, ex.prompt, add_bos=add_bos, context=ex.context), ROLE_PROMPT),
    (tok.encode(THINK_OPEN), ROLE_THINK),
    *((tok.encode(text), role) for text, role in marked_pieces(ex.thinking, ex.marks, ex.observed)),
    (tok.encode(THINK_CLOSE), ROLE_THINK),
    (tok.encode(ex.answer), ROLE_ANSWER),
  ]
  if add_eos:
    spans.append(([tok.eos_id], ROLE_ANSWER))
  tokens = np.asarray([t for ids, _ in spans for t in ids], dtype=np.int32)
  roles = np.asarray([role for ids, role in spans for _ in ids], dtype=np.int32)
  return Encoded(tokens=tokens, roles=roles)


def marked_pieces(thinking: str, marks, observed=()) -> list[tuple[str, int]]:
  """``thinking`` cut at the ``marks`` and ``observed`` spans: ``(text, ROLE_THINK |
  ROLE_MARKED | ROLE_OBSERVED)`` pieces (no empty ones); without spans, the whole text
  as one piece."""
  spans = sorted([(*m, ROLE_MARKED) for m in marks] + [(*o, ROLE_OBSERVED) for o in observed])
  pieces, at = [], 0
  for start, end, role in spans:
    if not at <= start < end <= len(thinking):
      raise ValueError(
        f"Example.marks {tuple(marks)} and observed {tuple(observed)} are not sorted, "
        "disjoint spans of thinking"
      )
    pieces += [(thinking[at:start], ROLE_THINK), (thinking[start:end], role)]
    at = end
  pieces.append((thinking[at:], ROLE_THINK))
  return [(text, role) for text, role in pieces if text] or [("", ROLE_THINK)]


def decode_response(tok: Tokenizer, ids: Sequence[int]) -> Response:
  """Decodes generated ids (the response part only) and parses them.

  Everything from the first EOS on is cut off (padding after EOS is meaningless).

  Args:
    tok: the tokenizer.
    ids: generated token ids, without the prompt.

  Returns:
    The parsed `Response`; ``finished`` says whether an EOS was seen.
  """
  ids = [int(i) for i in ids]
  finished = tok.eos_id >= 0 and tok.eos_id in ids
  if finished:
    ids = ids[: ids.index(tok.eos_id)]
  return parse_response(tok.decode(ids), finished=finished)


def render_messages(messages: Sequence[Mapping[str, str]]) -> tuple[str, str]:
  """Turns a chat ``messages`` list into ``(prompt_text, response_text)``.

  The response is the last (assistant) message. The prompt is the single user
  message when that is all there is before it, otherwise every earlier turn on its
  own line tagged with its role (``"User: ..."``).

  Args:
    messages: ``[{"role": "system"|"user"|"assistant", "content": str}, ...]``.

  Raises:
    ValueError: empty list, bad role/content, last message not from the assistant,
      or no user message before it.
  """
  if not isinstance(messages, Sequence) or isinstance(messages, str) or not messages:
    raise ValueError("'messages' must be a non-empty list of {role, content} objects")
  for i, msg in enumerate(messages):
    if not isinstance(msg, Mapping):
      raise ValueError(f"messages[{i}] must be an object, got {type(msg).__name__}")
    missing = {"role", "content"} - set(msg)
    if missing:
      raise ValueError(f"messages[{i}] lacks {sorted(missing)}")
    if msg["role"] not in CHAT_ROLES:
      raise ValueError(
        f"messages[{i}] has role {msg['role']!r}; expected one of {sorted(CHAT_ROLES)}"
      )
    if not isinstance(msg["content"], str):
      raise ValueError(
        f"messages[{i}].content must be a string, got {type(msg['content']).__name__}"
      )
  *context, last = messages
  if last["role"] != "assistant":
    raise ValueError(f"the last message must be from the assistant, got {last['role']!r}")
  if not any(msg["role"] == "user" for msg in context):
    raise ValueError("no user message before the final assistant message")
  if len(context) == 1:
    prompt = context[0]["content"]
  else:
    prompt = "\n".join(f"{CHAT_ROLES[msg['role']]}: {msg['content']}" for msg in context)
  return prompt, last["content"]


def _preview(text: str, limit: int = 80) -> str:
  return repr(text if len(text) <= limit else text[:limit] + "...")
