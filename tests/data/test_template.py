"""Tests for jaxpost.data.template."""

import numpy as np
import pytest

from jaxpost.data import tasks
from jaxpost.data.template import (
  THINK_CLOSE,
  THINK_OPEN,
  Encoded,
  Example,
  decode_response,
  encode_example,
  encode_prompt,
  parse_response,
  render_example,
  render_messages,
  render_prompt,
  render_response,
  split_response,
)
from jaxpost.data.tokenizer import SentencePieceTokenizer
from jaxpost.types import ROLE_ANSWER, ROLE_PROMPT, ROLE_THINK

EXAMPLES = [
  Example("357+468", "7+8+0=15,5+6+1=12,3+4+1=08", "825"),
  Example("What is 2+2?", "", "4"),
  Example("héllo 🙂", "think\nmulti line ", " spaced answer\n"),
  Example("", "x", ""),
]


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
  corpus = list(tasks.training_corpus(["add3", "expr2"], 400, seed=0))
  return SentencePieceTokenizer.train(corpus, tmp_path_factory.mktemp("tok") / "sp", vocab_size=300)


@pytest.mark.parametrize(
  "response, expected",
  [
    ("<think>a</think>b", ("a", "b")),
    ("<think></think>", ("", "")),
    ("<think>\nx\n</think>\n\ny", ("\nx\n", "\n\ny")),
    ("plain answer", ("", "plain answer")),
    ("", ("", "")),
  ],
)
def test_split_response(response, expected):
  assert split_response(response) == expected


@pytest.mark.parametrize(
  "response, message",
  [
    ("<think>never closed", "without a closing"),
    ("no open</think>x", "without an opening"),
    ("<think>a</think><think>b</think>c", "more than one"),
    ("<think>a<think>b</think>", "more than one"),
    ("pre<think>a</think>b", "text before"),
    ("</think>a<think>", "text before"),
  ],
)
def test_split_response_rejects_malformed(response, message):
  with pytest.raises(ValueError, match=message):
    split_response(response)


@pytest.mark.parametrize("ex", EXAMPLES)
def test_render_split_round_trip(ex):
  assert split_response(render_response(ex)) == (ex.thinking, ex.answer)
  assert render_example(ex) == render_prompt(ex.prompt) + render_response(ex)
  assert render_prompt(ex.prompt).startswith("Q: ")


@pytest.mark.parametrize("ex", EXAMPLES)
def test_roles_line_up_with_spans(tok, ex):
  enc = encode_example(tok, ex)
  assert enc.tokens.dtype == np.int32 and enc.roles.dtype == np.int32
  assert len(enc) == enc.tokens.shape[0] == enc.roles.shape[0]
  # Spans appear in order: prompt, think, answer.
  assert np.all(np.diff(enc.roles) >= 0)
  assert set(enc.roles.tolist()) <= {ROLE_PROMPT, ROLE_THINK, ROLE_ANSWER}
  text_of = lambda role: tok.decode(enc.tokens[enc.roles == role].tolist())
  assert text_of(ROLE_PROMPT) == render_prompt(ex.prompt)
  assert text_of(ROLE_THINK) == THINK_OPEN + ex.thinking + THINK_CLOSE
  assert text_of(ROLE_ANSWER) == ex.answer  # EOS decodes to nothing
  assert enc.tokens[-1] == tok.eos_id and enc.roles[-1] == ROLE_ANSWER
  assert tok.decode(enc.tokens.tolist()) == render_example(ex)
  think_ids = enc.tokens[enc.roles == ROLE_THINK]
  assert think_ids[0] == tok.piece_to_id(THINK_OPEN)
  assert think_ids[-1] == tok.piece_to_id(THINK_CLOSE)


@pytest.mark.parametrize("add_bos", [False, True])
def test_encode_prompt_is_prefix(tok, add_bos):
  for ex in EXAMPLES:
    prompt_ids = encode_prompt(tok, ex.prompt, add_bos=add_bos)
    enc = encode_example(tok, ex, add_bos=add_bos)
    assert enc.tokens[: len(prompt_ids)].tolist() == prompt_ids
    assert enc.prompt_len == len(prompt_ids)
    assert (prompt_ids[0] == tok.bos_id) == add_bos


def test_encode_without_eos(tok):
  enc = encode_example(tok, EXAMPLES[0], add_eos=False)
  assert tok.eos_id not in enc.tokens.tolist()
  assert tok.decode(enc.tokens.tolist()) == render_example(EXAMPLES[0])


def test_encode_rejects_tags_in_spans(tok):
  with pytest.raises(ValueError, match="Example.answer contains a think tag"):
    encode_example(tok, Example("p", "t", "a</think>b"))
  with pytest.raises(ValueError, match="Example.thinking"):
    encode_example(tok, Example("p", "<think>t", "a"))
  with pytest.raises(TypeError, match="Example.answer must be str"):
    encode_example(tok, Example("p", "t", 3))


class _NoSpecials:
  """A minimal tokenizer without BOS/EOS."""

  vocab_size, pad_id, bos_id, eos_id = 256, 0, -1, -1

  def encode(self, text):
    return list(text.encode())

  def decode(self, ids):
    return bytes(ids).decode()

  def piece_to_id(self, piece):
    raise KeyError(piece)


def test_missing_special_tokens_are_errors():
  tok = _NoSpecials()
  with pytest.raises(ValueError, match="no BOS"):
    encode_prompt(tok, "x", add_bos=True)
  with pytest.raises(ValueError, match="no EOS"):
    encode_example(tok, Example("x", "", "y"))
  enc = encode_example(tok, Example("x", "t", "y"), add_eos=False)
  assert tok.decode(enc.tokens.tolist()) == "Q: x\nA: <think>t</think>y"
  assert decode_response(tok, list(b"<think>a</think>b")).finished is False


def test_encoded_validates_shapes():
  with pytest.raises(ValueError, match="same shape"):
    Encoded(tokens=np.zeros(3, np.int32), roles=np.zeros(4, np.int32))


def test_decode_response(tok):
  ids = tok.encode("<think>1+2=3</think>3") + [tok.eos_id] + tok.encode("garbage") + [0, 0]
  resp = decode_response(tok, np.asarray(ids))
  assert (resp.thinking, resp.answer, resp.format_ok, resp.finished) == ("1+2=3", "3", True, True)
  unfinished = decode_response(tok, tok.encode("<think>1+2="))
  assert not unfinished.finished and not unfinished.format_ok
  assert unfinished.answer == "" and unfinished.text == "<think>1+2="


@pytest.mark.parametrize(
  "text, thinking, answer, format_ok",
  [
    ("<think>a</think>b", "a", "b", True),
    ("just 42", "", "just 42", False),
    ("<think>a</think>b</think>c", "", "", False),
    ("x<think>a</think>b", "", "", False),
  ],
)
def test_parse_response(text, thinking, answer, format_ok):
  resp = parse_response(text)
  assert (resp.thinking, resp.answer, resp.format_ok, resp.text) == (
    thinking,
    answer,
    format_ok,
    text,
  )


def test_render_messages():
  single = [{"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "4"}]
  assert render_messages(single) == ("2+2?", "4")
  multi = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "hi"},
    {"role": "assistant", "content": "hello"},
    {"role": "user", "content": "2+2?"},
    {"role": "assistant", "content": "<think>2+2=4</think>4"},
  ]
  prompt, response = render_messages(multi)
  assert prompt == "System: Be brief.\nUser: hi\nAssistant: hello\nUser: 2+2?"
  assert response == "<think>2+2=4</think>4"


@pytest.mark.parametrize(
  "messages, message",
  [
    ([], "non-empty list"),
    ("not a list", "non-empty list"),
    ([{"role": "user", "content": "x"}], "last message must be from the assistant"),
    ([{"role": "assistant", "content": "x"}], "no user message"),
    ([{"role": "bot", "content": "x"}, {"role": "assistant", "content": "y"}], "role 'bot'"),
    ([{"role": "user"}, {"role": "assistant", "content": "y"}], "lacks"),
    ([{"role": "user", "content": 1}, {"role": "assistant", "content": "y"}], "string"),
    (["x", {"role": "assistant", "content": "y"}], "must be an object"),
  ],
)
def test_render_messages_errors(messages, message):
  with pytest.raises(ValueError, match=message):
    render_messages(messages)
