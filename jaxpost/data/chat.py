"""Chat templates: a model's own Jinja template rendered over a ``messages`` list.

Instruct models ship the template they were trained with (``tokenizer.chat_template``
in GGUF metadata, ``chat_template`` in ``tokenizer_config.json`` or a
``chat_template.jinja`` file). Rendering follows the conventions those templates are
written for (the ones ``transformers.apply_chat_template`` sets up): whitespace
control with ``trim_blocks`` / ``lstrip_blocks``, ``{% break %}`` / ``{% continue %}``,
``raise_exception``, ``strftime_now``, a ``tojson`` that keeps non-ASCII text, and
``{% generation %}`` blocks (rendered as their body). Templates are untrusted input,
so they run in Jinja's immutable sandbox.
"""

from __future__ import annotations

import datetime
import functools
import json
from collections.abc import Mapping, Sequence
from typing import Any

import jinja2
import jinja2.ext
from jinja2.sandbox import ImmutableSandboxedEnvironment

CHAT_TEMPLATE_ROLES = ("system", "user", "assistant")


class ChatTemplateError(ValueError):
  """A chat template that does not compile or refuses the messages (raise_exception)."""


class _Generation(jinja2.ext.Extension):
  """``{% generation %}...{% endgeneration %}``: marks assistant text; we render the body."""

  tags = {"generation"}

  def parse(self, parser):
    lineno = next(parser.stream).lineno
    body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
    return jinja2.nodes.CallBlock(self.call_method("_body"), [], [], body).set_lineno(lineno)

  def _body(self, caller):
    return caller()


def _raise_exception(message: str):
  raise ChatTemplateError(f"the chat template refused the messages: {message}")


def _tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
  return json.dumps(
    x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys
  )


def _strftime_now(fmt: str) -> str:
  return datetime.datetime.now().strftime(fmt)


@functools.lru_cache(maxsize=16)
def _compile(template: str) -> jinja2.Template:
  env = ImmutableSandboxedEnvironment(
    trim_blocks=True,
    lstrip_blocks=True,
    extensions=[jinja2.ext.loopcontrols, _Generation],
  )
  env.filters["tojson"] = _tojson
  env.globals["raise_exception"] = _raise_exception
  env.globals["strftime_now"] = _strftime_now
  try:
    return env.from_string(template)
  except jinja2.TemplateSyntaxError as e:
    raise ChatTemplateError(f"chat template does not compile: {e} (line {e.lineno})") from e


def check_messages(messages: Sequence[Mapping[str, Any]]) -> list[dict[str, str]]:
  """``messages`` as plain dicts, each ``{"role": ..., "content": str}``.

  Raises:
    ValueError: not a non-empty list of such objects, naming the bad entry.
  """
  if not isinstance(messages, Sequence) or isinstance(messages, str) or not messages:
    raise ValueError("'messages' must be a non-empty list of {role, content} objects")
  out = []
  for i, msg in enumerate(messages):
    if not isinstance(msg, Mapping):
      raise ValueError(f"messages[{i}] must be an object, got {type(msg).__name__}")
    missing = {"role", "content"} - set(msg)
    if missing:
      raise ValueError(f"messages[{i}] lacks {sorted(missing)}")
    if not isinstance(msg["role"], str) or not isinstance(msg["content"], str):
      raise ValueError(f"messages[{i}] role and content must be strings")
    out.append({"role": msg["role"], "content": msg["content"]})
  return out


def render_chat(
  template: str,
  messages: Sequence[Mapping[str, Any]],
  *,
  add_generation_prompt: bool,
  bos_token: str = "",
  eos_token: str = "",
  **variables: Any,
) -> str:
  """Renders ``messages`` with a Jinja chat template.

  Args:
    template: the template source.
    messages: ``[{"role": ..., "content": ...}, ...]``.
    add_generation_prompt: end with the opening of an assistant turn (the prompt a
      model generates from).
    bos_token, eos_token: the tokenizer's special-token strings, which many templates
      print.
    **variables: further template variables (``tools``, ``enable_thinking``, ...).

  Returns:
    The rendered text; special tokens in it are plain strings, which the tokenizer's
    added-token matching turns into their ids.

  Raises:
    ChatTemplateError: the template does not compile or raises for these messages.
  """
  compiled = _compile(template)
  try:
    return compiled.render(
      messages=check_messages(messages),
      add_generation_prompt=add_generation_prompt,
      bos_token=bos_token,
      eos_token=eos_token,
      **variables,
    )
  except ChatTemplateError:
    raise
  except jinja2.TemplateError as e:
    raise ChatTemplateError(f"chat template failed: {e}") from e
