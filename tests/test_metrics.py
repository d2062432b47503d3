"""MetricWriter (JSONL + TensorBoard) and plot_metrics."""

import glob
import json
import math
import os
import struct

import numpy as np
import pytest
from tensorboardX.proto import event_pb2
from tensorboardX.record_writer import masked_crc32c

from jaxpost import metrics


def _read_tfrecords(path):
  """Records of a TFRecord file: u64 length, masked crc32c(length), data, masked crc32c(data)."""
  records = []
  with open(path, "rb") as f:
    while header := f.read(8):
      assert len(header) == 8, "truncated length header"
      (length,) = struct.unpack("<Q", header)
      (length_crc,) = struct.unpack("<I", f.read(4))
      assert length_crc == masked_crc32c(header), "bad length crc"
      data = f.read(length)
      assert len(data) == length, "truncated record"
      (data_crc,) = struct.unpack("<I", f.read(4))
      assert data_crc == masked_crc32c(data), "bad data crc"
      records.append(data)
  return records


def _scalars(tb_dir):
  """{tag: [(step, value), ...]} from every event file under ``tb_dir``."""
  files = glob.glob(os.path.join(tb_dir, "**", "events.out.tfevents.*"), recursive=True)
  assert files, f"no event file under {tb_dir}"
  out = {}
  for path in files:
    for data in _read_tfrecords(path):
      event = event_pb2.Event()
      event.ParseFromString(data)
      for v in event.summary.value:
        out.setdefault(v.tag, []).append((event.step, v.simple_value))
  return out


def test_writes_jsonl_and_tensorboard(tmp_path):
  writer = metrics.MetricWriter(str(tmp_path), enabled=True)
  writer.write(0, {"model/params": 1234})
  writer.write(5, {"train/loss": np.float32(2.5), "train/lr": 1e-3, "eval/accuracy/add3": 0.25})
  writer.write(10, {"train/loss": float("nan"), "train/grad_norm": float("inf")})
  writer.close()

  assert writer.path == str(tmp_path / "metrics.jsonl")
  lines = (tmp_path / "metrics.jsonl").read_text(encoding="utf-8").splitlines()
  assert len(lines) == 3
  records = [json.loads(line) for line in lines]  # strict JSON: one object per line
  assert records[0] == {"step": 0, "model/params": 1234.0}
  assert records[1]["step"] == 5
  assert records[1]["train/loss"] == 2.5
  assert records[1]["train/lr"] == pytest.approx(1e-3, rel=1e-12)
  assert records[1]["eval/accuracy/add3"] == 0.25
  # JSON has no NaN/inf: written as strings, and the line stays valid strict JSON.
  assert records[2] == {"step": 10, "train/loss": "nan", "train/grad_norm": "inf"}
  assert "NaN" not in lines[2] and "Infinity" not in lines[2]
  assert metrics.read_jsonl_metrics(writer.path) == records

  scalars = _scalars(str(tmp_path / "tensorboard"))
  assert scalars["model/params"] == [(0, 1234.0)]
  assert scalars["train/loss"][0] == (5, 2.5)
  assert scalars["train/loss"][1][0] == 10 and math.isnan(scalars["train/loss"][1][1])
  assert scalars["train/lr"] == [(5, pytest.approx(1e-3, rel=1e-6))]
  assert scalars["eval/accuracy/add3"] == [(5, 0.25)]
  assert scalars["train/grad_norm"] == [(10, math.inf)]


def test_appends_across_writers(tmp_path):
  """A resumed run reopens the same workdir and appends instead of truncating."""
  for step in (1, 2):
    writer = metrics.MetricWriter(str(tmp_path), enabled=True)
    writer.write(step, {"train/loss": float(step)})
    writer.close()
  records = metrics.read_jsonl_metrics(str(tmp_path / "metrics.jsonl"))
  assert [(r["step"], r["train/loss"]) for r in records] == [(1, 1.0), (2, 2.0)]


def test_disabled_writes_nothing(tmp_path):
  workdir = tmp_path / "w"
  writer = metrics.MetricWriter(str(workdir), enabled=False)
  writer.write(1, {"train/loss": 1.0})
  writer.close()
  assert not workdir.exists()


def test_plot_metrics_writes_png(tmp_path):
  path = tmp_path / "metrics.jsonl"
  rows = [{"step": s, "train/loss": 3.0 / s} for s in range(1, 6)]
  rows.append({"step": 5, "eval/accuracy/add3": 0.5, "eval/accuracy/mul2x2": 0.25})
  path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
  out = metrics.plot_metrics(str(path), str(tmp_path / "m.png"))
  assert out == str(tmp_path / "m.png")
  with open(out, "rb") as f:
    assert f.read(8) == b"\x89PNG\r\n\x1a\n"
  assert os.path.getsize(out) > 1000


def test_plot_metrics_with_missing_keys(tmp_path):
  """Keys absent from the file (e.g. no eval yet) are skipped, not an error."""
  path = tmp_path / "metrics.jsonl"
  path.write_text(json.dumps({"step": 1, "train/loss": 1.0}) + "\n", encoding="utf-8")
  out = metrics.plot_metrics(
    str(path), str(tmp_path / "m.png"), panels=("train/loss", "eval/x", "eval/y/*")
  )
  with open(out, "rb") as f:
    assert f.read(8) == b"\x89PNG\r\n\x1a\n"
