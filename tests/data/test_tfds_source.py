"""Tests for jaxpost.data.tfds_source: write a tiny array_record dataset, read it back.

The dataset is written with a small GeneratorBasedBuilder, which works without
TensorFlow when file_format="array_record".
"""

import importlib.util
import re
import sys
from pathlib import Path

import pytest
import tensorflow_datasets as tfds

from jaxpost.data import DataError, Example, read_tfds

RECORDS = {
  "train": [
    {"prompt": f"{i}+{i}", "response": f"<think>{i}+{i}={2 * i}</think>{2 * i}", "cot": "c"}
    for i in range(6)
  ]
  + [{"prompt": "ünï 🙂", "response": "plain", "cot": ""}],
  "bad": [{"prompt": "p", "response": "<think>never closed", "cot": ""}],
  # The JSONL text rules hold here too: blank prompt, blank response, NUL.
  "blank": [
    {"prompt": " ", "response": "r", "cot": ""},
    {"prompt": "p", "response": "<think> </think>", "cot": ""},
    {"prompt": "p\x00", "response": "r", "cot": ""},
  ],
}


class JaxpostTestTiny(tfds.core.GeneratorBasedBuilder):
  """Seven prompt/response records (and one malformed one in 'bad')."""

  VERSION = tfds.core.Version("1.0.0")

  def _info(self):
    # DatasetInfo directly: dataset_info_from_configs looks for package metadata files.
    return tfds.core.DatasetInfo(
      builder=self,
      features=tfds.features.FeaturesDict(
        {
          "prompt": tfds.features.Text(),
          "response": tfds.features.Text(),
          "cot": tfds.features.Text(),
        }
      ),
    )

  def _split_generators(self, dl_manager):
    del dl_manager
    return {split: self._generate_examples(split) for split in RECORDS}

  def _generate_examples(self, split):
    yield from enumerate(RECORDS[split])


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  data_dir = tmp_path_factory.mktemp("tfds")
  builder = JaxpostTestTiny(data_dir=str(data_dir), file_format="array_record")
  builder.download_and_prepare()
  return data_dir


def test_tensorflow_is_not_installed():
  # The point of this reader is that TensorFlow is never needed.
  assert importlib.util.find_spec("tensorflow") is None


def _expected(record):
  if "<think>" in record["response"]:
    thinking, answer = record["response"][len("<think>") :].split("</think>")
    return Example(record["prompt"], thinking, answer)
  return Example(record["prompt"], "", record["response"])


def test_read_from_directory(data_dir):
  examples = read_tfds(data_dir / "jaxpost_test_tiny" / "1.0.0", "train")
  assert len(examples) == len(RECORDS["train"])
  # TFDS shuffles on write, so compare as sets.
  got = {examples[i] for i in range(len(examples))}
  assert got == {_expected(r) for r in RECORDS["train"]}
  assert examples[-1] == examples[len(examples) - 1]
  assert examples[1:3] == [examples[1], examples[2]]
  assert list(examples) == [examples[i] for i in range(len(examples))]
  with pytest.raises(IndexError):
    examples[len(examples)]
  assert "tensorflow" not in sys.modules


def test_read_by_name(data_dir):
  examples = read_tfds("jaxpost_test_tiny", "train[:3]", data_dir=data_dir)
  assert len(examples) == 3
  assert all(isinstance(e, Example) for e in examples)
  assert "tensorflow" not in sys.modules


def test_separate_thinking_key(data_dir):
  examples = read_tfds(
    data_dir / "jaxpost_test_tiny" / "1.0.0", "train", response_key="prompt", thinking_key="cot"
  )
  assert {e.thinking for e in examples} == {"c", ""}
  assert all(e.answer == e.prompt for e in examples)


def test_errors(data_dir, tmp_path):
  version_dir = data_dir / "jaxpost_test_tiny" / "1.0.0"
  with pytest.raises(DataError, match=r"lacks features \['question'\]"):
    read_tfds(version_dir, "train", prompt_key="question")
  bad = read_tfds(version_dir, "bad")
  with pytest.raises(DataError, match=r"\[bad\]\[0\].*without a closing"):
    bad[0]
  with pytest.raises(DataError, match="cannot open"):
    read_tfds(version_dir, "validation")
  with pytest.raises(DataError, match="cannot open"):
    read_tfds("no_such_dataset_anywhere", "train", data_dir=tmp_path)
  with pytest.raises(FileNotFoundError, match="without dataset_info.json"):
    read_tfds(tmp_path, "train")


def test_blank_and_nul_records_are_errors_naming_split_and_index(data_dir):
  blank = read_tfds(data_dir / "jaxpost_test_tiny" / "1.0.0", "blank")
  messages = []
  for i in range(len(blank)):
    with pytest.raises(DataError, match=re.escape(f"[blank][{i}]: ")) as info:
      blank[i]
    messages.append(str(info.value))
  # TFDS shuffles on write: compare the set of problems.
  problems = {m.split("]: ", 1)[1].split(" (")[0] for m in messages}
  assert problems == {
    "empty prompt",
    "empty response",
    "prompt contains a NUL character at offset 1",
  }


def test_overlong_tfds_example_names_split_and_index(data_dir, tmp_path):
  from jaxpost import config_lib
  from jaxpost.data import pipeline
  from jaxpost.data.packing import OverlongError

  repo = Path(__file__).resolve().parents[2]
  c = config_lib.load_config(str(repo / "configs" / "base.py:sft"))
  c.data.source, c.data.path, c.data.split = (
    "tfds",
    str(data_dir / "jaxpost_test_tiny" / "1.0.0"),
    "train",
  )
  pipeline._read_dataset.cache_clear()
  dataset = pipeline.load_dataset(c)
  assert dataset.where(3) == f"{c.data.path}[train][3]"

  class CharTokenizer:
    vocab_size, pad_id, bos_id, eos_id = 1 << 21, 0, 2, 3

    def encode(self, text):
      return [ord(ch) for ch in text]

  longest = max(
    range(len(dataset)), key=lambda i: pipeline.encoded_length(CharTokenizer(), dataset.examples[i])
  )
  n = pipeline.encoded_length(CharTokenizer(), dataset.examples[longest])
  with pytest.raises(OverlongError, match=re.escape(f"[train][{longest}] has {n} tokens")):
    pipeline.check_overlong(dataset, CharTokenizer(), n - 1)
  pipeline._read_dataset.cache_clear()
