"""Chat templates: rendering, prompts and loss spans under a template, and the
tokenizers that carry one (tokenizer.json + tokenizer_config.json, GGUF metadata)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import tokenizers
from tokenizers import decoders, models, pre_tokenizers, trainers

from jaxpost.data import template
from jaxpost.data.chat import ChatTemplateError, render_chat
from jaxpost.data.jsonl import record_to_example
from jaxpost.data.tokenizer import HFTokenizer
from jaxpost.types import ROLE_ANSWER, ROLE_PROMPT, ROLE_THINK

CHATML = (
  "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
  "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
CORPUS = [
  "What is 12+30? The answer is 42.",
  "Be brief. Name a colour: red, green, blue.",
  "<think>2+0=2,1+3=4</think>42",
] * 20


def _tokenizer(chat_template=CHATML) -> HFTokenizer:
  tok = tokenizers.Tokenizer(models.BPE())
  tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
  tok.decoder = decoders.ByteLevel()
  trainer = trainers.BpeTrainer(
    vocab_size=400,
    special_tokens=SPECIALS,
    initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    show_progress=False,
  )
  tok.train_from_iterator(CORPUS, trainer)
  return HFTokenizer(tok, pad_id=0, bos_id=-1, eos_id=2, chat_template=chat_template)


def test_render_matches_a_hand_written_conversation():
  messages = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "hi"},
  ]
  want = "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nhi<|im_end|>\n"
  assert render_chat(CHATML, messages, add_generation_prompt=False) == want
  assert render_chat(CHATML, messages, add_generation_prompt=True) == (
    want + "<|im_start|>assistant\n"
  )


def test_template_conventions():
  """trim/lstrip blocks, loop controls, tojson keeping non-ASCII, generation blocks."""
  t = (
    "{% for m in messages %}\n"
    "  {% if loop.index > 2 %}{% break %}{% endif %}\n"
    "{{ m['content'] | tojson }};\n"
    "{% endfor %}"
    "{% generation %}[{{ bos_token }}]{% endgeneration %}"
  )
  msgs = [{"role": "user", "content": c} for c in ("ü", "b", "c")]
  assert render_chat(t, msgs, add_generation_prompt=False, bos_token="<s>") == '"ü";\n"b";\n[<s>]'


def test_template_errors_are_clear():
  with pytest.raises(ChatTemplateError, match="does not compile"):
    render_chat("{% for %}", [{"role": "user", "content": "x"}], add_generation_prompt=True)
  refusing = "{% if messages[0]['role'] != 'user' %}{{ raise_exception('user first') }}{% endif %}"
  with pytest.raises(ChatTemplateError, match="user first"):
    render_chat(refusing, [{"role": "system", "content": "x"}], add_generation_prompt=True)
  with pytest.raises(ValueError, match=r"messages\[0\] lacks"):
    render_chat(CHATML, [{"role": "user"}], add_generation_prompt=True)


def test_templates_run_sandboxed():
  evil = "{{ ''.__class__.__mro__[1].__subclasses__() }}"
  with pytest.raises(ChatTemplateError):
    render_chat(evil, [{"role": "user", "content": "x"}], add_generation_prompt=True)


def test_chat_prompt_and_loss_span():
  tok = _tokenizer()
  ex = template.Example(prompt="What is 12+30?", thinking="2+0=2,1+3=4", answer="42")
  enc = template.encode_example(tok, ex)
  prompt = template.encode_prompt(tok, ex.prompt)
  assert tok.decode(prompt) == "<|im_start|>user\nWhat is 12+30?<|im_end|>\n<|im_start|>assistant\n"
  assert prompt[0] == tok.piece_to_id("<|im_start|>")  # special tokens are single ids
  n = len(prompt)
  assert enc.tokens[:n].tolist() == prompt and set(enc.roles[:n].tolist()) == {ROLE_PROMPT}
  assert tok.decode(enc.tokens[n:].tolist()) == "<think>2+0=2,1+3=4</think>42<|im_end|>"
  answer = tok.decode(enc.tokens[enc.roles == ROLE_ANSWER].tolist())
  assert answer == "42<|im_end|>"
  assert tok.decode(enc.tokens[enc.roles == ROLE_THINK].tolist()) == "<think>2+0=2,1+3=4</think>"


def test_multi_turn_messages_render_their_context():
  record = {
    "messages": [
      {"role": "system", "content": "Be brief."},
      {"role": "user", "content": "Name a colour"},
      {"role": "assistant", "content": "red"},
      {"role": "user", "content": "Another"},
      {"role": "assistant", "content": "green"},
    ]
  }
  ex = record_to_example(record)
  assert ex.context[0] == ("system", "Be brief.") and len(ex.context) == 4
  tok = _tokenizer()
  enc = template.encode_example(tok, ex)
  prompt_text = tok.decode(enc.tokens[enc.roles == ROLE_PROMPT].tolist())
  assert prompt_text == render_chat(CHATML, record["messages"][:-1], add_generation_prompt=True)
  # Only the final assistant message is trained; the earlier one ("red") is context.
  assert tok.decode(enc.tokens[enc.roles == ROLE_ANSWER].tolist()) == "green<|im_end|>"
  # Without a chat template the same example keeps the plain Q:/A: prompt.
  plain = _tokenizer(chat_template=None)
  text = plain.decode(template.encode_prompt(plain, ex.prompt, context=ex.context))
  assert text == template.render_prompt(ex.prompt) and "Assistant: red" in text


def test_single_user_turn_is_just_the_prompt():
  ex = record_to_example(
    {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]}
  )
  assert ex == template.Example("hi", "", "yo")


def test_encoded_length_counts_the_chat_prompt():
  from jaxpost.data.pipeline import encoded_length

  tok = _tokenizer()
  ex = template.Example(prompt="What is 12+30?", thinking="2+0=2", answer="42", context=())
  assert encoded_length(tok, ex) == len(template.encode_example(tok, ex))


def test_add_bos_without_a_template():
  tok = _tokenizer(chat_template=None)
  tok.bos_id, tok.add_bos = 1, True
  assert template.encode_prompt(tok, "hi")[0] == 1
  assert template.encode_prompt(tok, "hi", add_bos=False)[0] != 1


def test_tokenizer_json_loads_and_saves_its_chat_template(tmp_path):
  from jaxpost.models.hf import _save_tokenizer

  tok = _tokenizer()
  tok.backend.save(str(tmp_path / "tokenizer.json"))
  config = {"eos_token": "<|im_end|>", "chat_template": CHATML, "add_bos_token": False}
  (tmp_path / "tokenizer_config.json").write_text(json.dumps(config))
  loaded = HFTokenizer.load(tmp_path)
  assert loaded.chat_template == CHATML and loaded.eos_id == 2
  # A list of named templates: "default" is used; a chat_template.jinja file wins.
  config["chat_template"] = [
    {"name": "tool_use", "template": "x"},
    {"name": "default", "template": "d"},
  ]
  (tmp_path / "tokenizer_config.json").write_text(json.dumps(config))
  assert HFTokenizer.load(tmp_path).chat_template == "d"
  (tmp_path / "chat_template.jinja").write_text("j")
  assert HFTokenizer.load(tmp_path).chat_template == "j"
  out = tmp_path / "out"
  out.mkdir()
  _save_tokenizer(loaded, out)
  again = HFTokenizer.load(out)
  assert again.chat_template == CHATML
  assert np.array_equal(again.encode("What is 12+30?"), loaded.encode("What is 12+30?"))
