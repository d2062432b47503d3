"""The README's SmolLM2 commands, shortened: SFT and GRPO through ``python -m jaxpost.main``
from the real pretrained model (its GGUF weights, tokenizer and chat template).

They run as a user's command does, on one CPU device: on the suite's 8 fake devices
the 135M parameters would be held 8 times (~17 GB with Adam), and with FSDP the
collectives of 8 device threads on 2 cores can miss XLA's 40 s rendezvous limit.
"""

import json
import os

import jax
import numpy as np
import pytest
from flax import nnx

from jaxpost.models import gguf

pytest.importorskip("gguf", reason="GGUF import needs the gguf package")

SHORT = (
  "--config.train.progress=False",
  "--config.train.log_every=1",
  "--config.eval.num_examples=8",
  "--config.eval.batch_size=8",
  "--config.eval.max_new_tokens=8",
)


@pytest.fixture(scope="module", autouse=True)
def _wheel():
  try:
    gguf.find_packaged("smollm2")
  except FileNotFoundError as e:
    pytest.skip(str(e))


def _records(workdir):
  with open(os.path.join(workdir, "metrics.jsonl"), encoding="utf-8") as f:
    return [json.loads(line) for line in f]


def _check(proc):
  assert proc.returncode == 0, proc.stderr[-3000:]


def test_sft_smollm2(run_cli, tmp_path):
  workdir = str(tmp_path / "sft")
  _check(
    run_cli(
      "--config=configs/sft.py:smollm2",
      f"--workdir={workdir}",
      *SHORT,
      "--config.train.steps=2",
      "--config.eval.every=2",
      "--config.data.batch_size=2",
      "--config.data.seq_len=96",
    )
  )
  records = _records(workdir)
  losses = [r["train/loss"] for r in records if "train/loss" in r]
  assert len(losses) == 2 and np.all(np.isfinite(losses))
  # A pretrained model: its first loss on the traces is far below a uniform guess.
  assert losses[0] < 0.5 * np.log(49152)
  assert "eval/accuracy/add3" in records[-1]


def test_grpo_smollm2(run_cli, tmp_path):
  workdir = str(tmp_path / "rl")
  _check(
    run_cli(
      "--config=configs/grpo.py:smollm2",
      f"--workdir={workdir}",
      *SHORT,
      "--config.train.steps=1",
      "--config.eval.every=0",
      "--config.rl.prompts_per_step=2",
      "--config.rl.samples_per_prompt=4",
      "--config.rl.max_new_tokens=8",
      "--config.model.keep_layers=0:30:10",  # 3 blocks: the real import, tokenizer, sampler
    )
  )
  (record,) = [r for r in _records(workdir) if "train/loss" in r]
  assert np.isfinite(record["train/loss"])


def test_distill_smollm2_into_its_own_pruned_blocks(run_cli, tmp_path):
  """configs/distill.py:smollm2 with the packaged model itself as the teacher (the
  zoo's fine-tuned teacher takes minutes to build): the student is SmolLM2 cut to 10
  of its 30 blocks, and it starts close to the teacher (it shares their weights)."""
  workdir = str(tmp_path / "kd")
  proc = run_cli(
    "--config=configs/distill.py:smollm2",
    f"--workdir={workdir}",
    *SHORT,
    "--config.teacher.init_from=",
    "--config.train.steps=2",
    "--config.eval.every=0",
    "--config.data.batch_size=2",
    "--config.data.seq_len=96",
  )
  _check(proc)
  full = gguf.load_model(gguf.find_packaged("smollm2"))
  per_block = sum(x.size for x in jax.tree.leaves(nnx.state(full.layers[0], nnx.Param)))
  total = sum(x.size for x in jax.tree.leaves(nnx.state(full, nnx.Param)))
  assert f"model: {total - 20 * per_block} parameters" in proc.stderr
  losses = [r["train/loss"] for r in _records(workdir) if "train/loss" in r]
  assert len(losses) == 2 and np.all(np.isfinite(losses)) and min(losses) > 0


def test_flag_smollm2_scores_user_records_with_the_real_model(run_cli, tmp_path):
  """configs/flag.py:smollm2 on a user's records (the packaged model, no zoo build):
  features of blocks 15 and 30 through the chat template, every detector scored."""
  from jaxpost.data import tasks

  mix = tasks.mixture({"add3": 1.0}, "train", 0)
  path = tmp_path / "records.jsonl"
  with open(path, "w", encoding="utf-8") as f:
    for i in range(24):  # one batch: the 135M forward is most of this test's time
      p = mix.problem_at(i)
      answer = p.answer if i % 2 == 0 else str(int(p.answer) + 10 + i)
      f.write(json.dumps({"question": p.prompt, "answer": answer, "label": int(i % 2 == 0),
                          "level": "add3"}) + "\n")  # fmt: skip
  workdir = tmp_path / "flag"
  proc = run_cli(
    "--config=configs/flag.py:smollm2",
    f"--workdir={workdir}",
    "--config.train.init_from=",
    "--config.model.gguf=smollm2",
    f"--config.detect.records={path}",
    "--config.detect.steps=20",
    "--config.detect.bootstrap=20",
    "--config.detect.groups=4",
    "--config.detect.batch_size=24",
  )
  _check(proc)
  info = json.loads((workdir / "features" / "features.json").read_text())
  assert info["layers"] == [15, 29] and info["records"] == 24 and info["levels"] == ["add3"]
  (record,) = _records(str(workdir))
  for name in ("flag", "flag_k1", "linear_probe", "perplexity", "instability"):
    assert 0.0 <= record[f"detect/{name}/auroc"] <= 1.0


def test_lora_sft_smollm2(run_cli, tmp_path):
  """LoRA on the imported GGUF model cut to 3 blocks, every linear of every kept block:
  only the adapters train (their count by hand from the model's shapes) and the loss
  stays finite."""
  workdir = str(tmp_path / "lora")
  proc = run_cli(
    "--config=configs/sft.py:smollm2",
    f"--workdir={workdir}",
    *SHORT,
    "--config.train.steps=2",
    "--config.eval.every=0",
    "--config.data.batch_size=2",
    "--config.data.seq_len=96",
    "--config.lora.rank=8",
    "--config.lora.targets=(attn|mlp)\\.[a-z]+_proj$",
    "--config.model.keep_layers=0:30:10",  # 3 of 30 blocks: adapters on the kept ones
  )
  _check(proc)
  c = gguf.load_model(gguf.find_packaged("smollm2")).config
  d, q, kv, f = c.d_model, c.n_heads * c.head_dim, c.n_kv_heads * c.head_dim, c.mlp_dim
  per_block = (d + q) + 2 * (d + kv) + (q + d) + 2 * (d + f) + (f + d)
  assert f"{8 * per_block * 3} trainable" in proc.stderr
  losses = [r["train/loss"] for r in _records(workdir) if "train/loss" in r]
  assert len(losses) == 2 and np.all(np.isfinite(losses))
