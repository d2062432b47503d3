"""A model's own responses to a file of prompts, as a dataset: what it did before tuning.

Forgetting (S3FT's and self-data distillation's main claim) is a change in what a model
does outside the fine-tuning task. Without a general benchmark offline, one measure is
how well a tuned model still predicts its base's own greedy answers to general prompts:
the base writes them once here, and ``python -m jaxpost.eval RUN --heldout=FILE
--heldout_span=answer`` (or ``jaxpost.sweep.evaluate`` with the same flags, over a
sweep) scores each tuned run's NLL of them, nats per answer token. The base's own score
(``python -m jaxpost.eval smollm2 --heldout=...``) is the reference; the rise after
tuning is the drift.

  python -m jaxpost.datagen.responses --model=smollm2 \\
      --prompts=configs/data/general_prompts.txt --out=runs/data/general-smollm2

The prompts file holds one prompt per line (blank lines skipped). Greedy decoding, so a
rerun writes the same file.
"""

from __future__ import annotations

import argparse
import json

from jaxpost.datagen import core


def read_prompts(path: str) -> list[str]:
  """The non-blank lines of ``path``, stripped; ValueError when there are none."""
  with open(path, encoding="utf-8") as f:
    prompts = [line.strip() for line in f if line.strip()]
  if not prompts:
    raise ValueError(f"{path}: no prompts")
  return prompts


def build(
  author: core.Author,
  prompts: list[str],
  out_dir: str,
  *,
  max_new_tokens: int = 96,
  batch_size: int = 32,
  source: str = "",
) -> dict:
  """Writes ``author``'s greedy response to each prompt (empty ones dropped, counted);
  returns the manifest. ``source`` names the prompts' file in the manifest."""
  writer = core.Writer(author, max_new_tokens=max_new_tokens, batch_size=batch_size)
  responses = writer(prompts)
  records = [
    core.record(p, r, model=author.name, step=author.step, index=i)
    for i, (p, r) in enumerate(zip(prompts, responses, strict=True))
    if r.strip()
  ]
  inputs = dict(model=author.name, step=author.step, prompts=source, n=len(prompts),
                max_new_tokens=max_new_tokens, batch_size=batch_size)  # fmt: skip
  counts = {"records": len(records), "empty": len(prompts) - len(records)}
  return core.write_dataset(
    out_dir, records, method="responses", inputs=inputs, counts=counts, cost=writer.cost
  )


def main(argv=None) -> None:
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--model", required=True, help="a run, zoo:NAME, smollm2 or a .gguf file")
  p.add_argument("--prompts", required=True, help="a text file, one prompt per line")
  p.add_argument("--out", required=True, help="the dataset's directory")
  p.add_argument("--max_new_tokens", type=int, default=96)
  p.add_argument("--batch_size", type=int, default=32)
  a = p.parse_args(argv)
  prompts = read_prompts(a.prompts)
  manifest = build(core.load_author(a.model), prompts, a.out, max_new_tokens=a.max_new_tokens,
                   batch_size=a.batch_size, source=a.prompts)  # fmt: skip
  print(json.dumps({"out": a.out, **manifest["counts"], "cost": manifest["cost"]}))


if __name__ == "__main__":
  main()
