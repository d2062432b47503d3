"""Tool-integrated reasoning (SimpleTIR, arXiv 2509.02479; methods card rl.md section 7):
multi-turn rollouts in which the model writes Python, a sandbox runs it, and the output
comes back as a tool turn.

A trajectory, inside the template's think block::

    <think>```python
    print(48213*7391)
    ```
    ```output
    356342283
    ```
    </think>356342283

Each model turn is sampled until the end of a code block (the stop string
``"\\n```\\n"``), EOS or the token budget. Then (``parse_turn``):

  answer   the turn closes the think block and writes a non-blank answer: done
  code     a complete fenced block (```` ```python ````, ```` ```py ```` or bare): the code runs in
           the sandbox (``jaxpost/tools/sandbox.py``: its own process, wall-clock and
           CPU limits, a memory limit, no network, a scratch directory it cannot leave,
           capped output) and its output, or the error's last line, is appended as a
           tool turn: tokens the model reads but never trains on (loss mask 0)
  void     neither: the trajectory stops, marked void

up to ``max_turns`` model turns and ``max_new_tokens`` completion tokens in all (tool
turns included). A tool call that hangs, forks, allocates without bound, reads outside
its directory or opens a socket comes back as a failed turn ("timeout: ...",
"blocked: ..."), never as an error of the run.

SimpleTIR's filter (``mask_void``): a trajectory with a void turn gets loss mask 0, so
no gradient, yet stays in its group, so the group's baseline for the other rollouts is
unchanged (``void_in_group=False`` leaves it out of the baseline instead; ``group_baseline``).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import re
import sys
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor

import jax
import numpy as np

from jaxpost.data import tasks, template
from jaxpost.tools import sandbox

CODE_END = "\n```\n"  # the stop string that ends a code turn
CODE_RE = re.compile(r"```(?:py|python)?\n(.*?)\n```", re.DOTALL)
OUTPUT_OPEN, OUTPUT_CLOSE = "```output\n", "\n```\n"
MAX_OUTPUT_CHARS = 200  # of a tool turn's text (the model's context is short)


@dataclasses.dataclass(frozen=True)
class Turn:
  kind: str  # "answer" | "code" | "void"
  code: str = ""


def parse_turn(text: str) -> Turn:
  """What a model turn did (module doc): an answer wins over code, as in SimpleTIR."""
  if template.THINK_CLOSE in text and text.rsplit(template.THINK_CLOSE, 1)[1].strip():
    return Turn("answer")
  match = CODE_RE.search(text)
  if match:
    return Turn("code", match.group(1))
  return Turn("void")


def tool_text(result: sandbox.Result) -> str:
  """The tool turn shown to the model: stdout on success, else status and the error's
  last line, cut to ``MAX_OUTPUT_CHARS``."""
  if result.ok:
    body = result.stdout.strip()
  else:
    last = (result.stderr.strip().splitlines() or [""])[-1]
    body = f"{result.status}: {last}" if last else result.status
  return OUTPUT_OPEN + body[:MAX_OUTPUT_CHARS] + OUTPUT_CLOSE


def run_tools(codes: Sequence[str], limits: sandbox.Limits, workers: int) -> list[sandbox.Result]:
  """Runs each code in its own sandbox process, ``workers`` at a time."""
  if not codes:
    return []
  with ThreadPoolExecutor(max(1, workers)) as pool:
    return list(pool.map(lambda c: sandbox.run_python(c, limits), codes))


@dataclasses.dataclass
class Trajectory:
  """One row's completion, segment by segment (host lists)."""

  ids: list[int] = dataclasses.field(default_factory=list)
  raw_logp: list[float] = dataclasses.field(default_factory=list)
  filtered_logp: list[float] = dataclasses.field(default_factory=list)
  tool: list[bool] = dataclasses.field(default_factory=list)  # tool-turn tokens
  turn: list[int] = dataclasses.field(default_factory=list)  # 1-based model turn; 0 = tool
  void: bool = False
  finished: bool = False  # ended on its own (answer, void or EOS), not by the budget
  calls: int = 0
  failed_calls: int = 0

  def add(self, ids, raw, filtered, *, tool: bool, turn: int) -> None:
    self.ids += [int(i) for i in ids]
    self.raw_logp += [float(x) for x in raw]
    self.filtered_logp += [float(x) for x in filtered]
    self.tool += [tool] * len(ids)
    self.turn += [0 if tool else turn] * len(ids)


# generate_turn(contexts, turn) -> per context (ids, raw logp, filtered logp, ended by EOS)
GenerateTurn = Callable[[list[list[int]], int], list[tuple[list[int], list, list, bool]]]


def rollout(
  generate_turn: GenerateTurn,
  tok,
  prompts: Sequence[Sequence[int]],
  *,
  max_turns: int,
  max_new_tokens: int,
  limits: sandbox.Limits,
  workers: int = 2,
) -> list[Trajectory]:
  """Multi-turn trajectories of ``prompts`` (module doc); the model is ``generate_turn``."""
  rows = [Trajectory() for _ in prompts]
  active = list(range(len(prompts)))
  for turn in range(1, max_turns + 1):
    if not active:
      break
    outs = generate_turn([list(prompts[i]) + rows[i].ids for i in active], turn)
    calls = []  # (row, code, what the turn wrote after the code block)
    for i, (ids, raw, filtered, eos) in zip(active, outs, strict=True):
      room = max_new_tokens - len(rows[i].ids)
      cut = len(ids) > room
      ids, raw, filtered = ids[:room], raw[:room], filtered[:room]
      rows[i].add(ids, raw, filtered, tool=False, turn=turn)
      text = tok.decode([t for t in ids if t != tok.eos_id])
      kind = parse_turn(text)
      if kind.kind == "code":  # a tool call, if the budget leaves room for its output
        if not cut and len(rows[i].ids) < max_new_tokens:
          calls.append((i, kind.code, text.rsplit(CODE_END, 1)[-1] if CODE_END in text else ""))
      elif kind.kind == "answer":
        rows[i].finished = eos  # an answer cut at a cap is unfinished
      else:  # neither code nor an answer: the trajectory stops here
        rows[i].void, rows[i].finished = True, not cut
    results = run_tools([code for _, code, _ in calls], limits, workers)
    next_active = []
    for (i, _, after), result in zip(calls, results, strict=True):
      rows[i].calls += 1
      rows[i].failed_calls += not result.ok
      tool = tool_text(result)
      # The stop string ends inside a token, which may already hold the start of the
      # output fence (a merged piece such as "\n```\n```"): continue the text from there.
      if after and tool.startswith(after):
        tool = tool[len(after) :]
      ids = tok.encode(tool)[: max_new_tokens - len(rows[i].ids)]
      rows[i].add(ids, [0.0] * len(ids), [0.0] * len(ids), tool=True, turn=turn)
      if len(rows[i].ids) < max_new_tokens:
        next_active.append(i)
    active = next_active
  return rows


def group_baseline(rewards: np.ndarray, void: np.ndarray, g: int, *, eps: float = 1e-6):
  """(mean f32[P], scale f32[P]) of GRPO's z-score (Bessel-corrected std + eps) over
  each group's non-void rows: the baseline that leaves void trajectories out of the group.
  Scale 1 where the kept rows are fewer than two or all equal (their advantage is then
  0); mean 0 where every row is void."""
  r, keep = np.asarray(rewards, np.float64).reshape(-1, g), ~np.asarray(void).reshape(-1, g)
  n = keep.sum(axis=1)
  mean = np.where(n > 0, (r * keep).sum(axis=1) / np.maximum(n, 1), 0.0)
  sq_dev = ((r - mean[:, None]) ** 2 * keep).sum(axis=1)
  std = np.sqrt(sq_dev / np.maximum(n - 1, 1))
  scale = np.where((n > 1) & (sq_dev > 0), std + eps, 1.0)
  return mean.astype(np.float32), scale.astype(np.float32)


# ---------------------------------------------------------------------------------------
# Supervised traces for a tool-using start (the trajectory format above, with the output).


def tool_trace(problem: tasks.Problem) -> str:
  """The response of a one-call trajectory for a task problem (its prompt is Python)."""
  code = f"print({problem.prompt})"
  output = sandbox.Result("ok", problem.answer + "\n", "", 0, 0.0)  # what the tool prints
  return (
    f"{template.THINK_OPEN}```python\n{code}{CODE_END}{tool_text(output)}"
    f"{template.THINK_CLOSE}{problem.answer}"
  )


def write_sft(path: str, levels: dict[str, float], n: int, seed: int = 0) -> None:
  """``n`` JSONL records {"prompt", "response"} of tool traces (``data.source=jsonl``)."""
  mixture = tasks.mixture(levels, "train", seed)
  with open(path, "w") as f:
    for i in range(n):
      p = mixture(i)
      f.write(json.dumps({"prompt": p.prompt, "response": tool_trace(p)}) + "\n")


# ---------------------------------------------------------------------------------------
# The model side: turns from the KV-cache sampler; groups for the RL recipe.


def sampler_turns(generate_fn, model_state, tok, key, *, group_size: int, bucket: int = 16):
  """A ``GenerateTurn`` from the sampler: turn 1 prefills each group's prompt once (rows
  of a group adjacent), later turns continue each row from its own context; every turn
  is cut after its first code block (``CODE_END``)."""
  from jaxpost.rollout import sampler

  rows = []  # the first call's row count: later calls are padded to it (one shape)

  def generate_turn(contexts, turn):
    k = jax.random.fold_in(key, turn)
    rows.append(len(contexts))
    contexts = list(contexts) + [contexts[-1]] * (rows[0] - len(contexts))
    if turn == 1 and group_size > 1:
      firsts = contexts[::group_size]
      width = -(-max(map(len, firsts)) // bucket) * bucket
      _, _, out = sampler.generate_groups(
        generate_fn, model_state, firsts, group_size, k, pad_id=tok.pad_id, width=width
      )
    else:
      tokens, mask = sampler.left_pad(contexts, tok.pad_id)
      width = -(-tokens.shape[1] // bucket) * bucket
      pad = width - tokens.shape[1]
      tokens = np.pad(tokens, ((0, 0), (pad, 0)), constant_values=tok.pad_id)
      mask = np.pad(mask, ((0, 0), (pad, 0)))
      keys = jax.vmap(jax.random.fold_in, in_axes=(None, 0))(k, np.arange(len(contexts)))
      out = generate_fn(model_state, tokens, mask, keys)
    out = sampler.apply_stop_strings(
      jax.device_get(out), tok.decode, (CODE_END,), pad_id=tok.pad_id
    )
    result = []
    for row in range(rows[-1]):  # the padding rows' turns are dropped
      n = int(out.lengths[row])
      ids = out.tokens[row, :n].tolist()
      result.append((ids, out.logp[row, :n], out.filtered_logp[row, :n], tok.eos_id in ids))
    return result

  return generate_turn


def sample_tool_groups(
  generate_fn,
  model_state,
  tok,
  problems: list[tasks.Problem],
  num_samples: int,
  key: jax.Array,
  spec,
  *,
  max_turns: int,
  max_new_tokens: int,
  limits: sandbox.Limits,
  workers: int = 2,
  pool=None,
):
  """G multi-turn trajectories per problem, laid out and scored like
  ``rollout.groups.sample_groups`` (the same ``Groups``), tool tokens off the loss mask.

  ``Groups.info`` holds per row: ``void`` (a void turn), ``tool_calls``,
  ``failed_calls``, ``turns`` (model turns), and ``turn_ids`` i32[R, T] (the model turn of
  each completion target, 0 on tool tokens and off the completion).
  """
  g = num_samples
  prompts = [template.encode_prompt(tok, p.prompt) for p in problems]
  contexts = [prompts[i // g] for i in range(len(prompts) * g)]
  turns = sampler_turns(generate_fn, model_state, tok, key, group_size=g)
  rows = rollout(
    turns, tok, contexts, max_turns=max_turns, max_new_tokens=max_new_tokens, limits=limits,
    workers=workers,
  )  # fmt: skip
  return tool_groups(rows, contexts, problems, tok, spec, max_new_tokens=max_new_tokens, pool=pool)


def tool_groups(
  rows: list[Trajectory],
  contexts: list[list[int]],
  problems: list[tasks.Problem],
  tok,
  spec,
  *,
  max_new_tokens: int,
  pool=None,
):
  """Trajectories (G adjacent rows per problem, ``contexts`` their prompts) laid out and
  scored as ``Groups`` (``sample_tool_groups``)."""
  from jaxpost import rewards
  from jaxpost.rollout import batching, sampler
  from jaxpost.rollout.groups import PROMPT_BUCKET, Groups, score_samples

  g = len(rows) // len(problems)
  b, n = len(rows), max_new_tokens
  gen = np.full((b, n), tok.pad_id, np.int32)
  raw, filtered = np.zeros((b, n), np.float32), np.zeros((b, n), np.float32)
  for i, r in enumerate(rows):
    gen[i, : len(r.ids)], raw[i, : len(r.ids)], filtered[i, : len(r.ids)] = (
      r.ids, r.raw_logp, r.filtered_logp
    )  # fmt: skip
  lengths = np.asarray([len(r.ids) for r in rows], np.int32)
  finished = np.asarray([r.finished for r in rows])
  p_tok, p_mask = sampler.left_pad(contexts, tok.pad_id)
  width = -(-p_tok.shape[1] // PROMPT_BUCKET) * PROMPT_BUCKET
  p_tok = np.pad(p_tok, ((0, 0), (width - p_tok.shape[1], 0)), constant_values=tok.pad_id)
  p_mask = np.pad(p_mask, ((0, 0), (width - p_mask.shape[1], 0)))
  out = sampler.GenerateOutput(gen, lengths, raw, filtered, finished)
  think_tags = (tok.encode(template.THINK_OPEN), tok.encode(template.THINK_CLOSE))
  laid = batching.rollout_batch(p_tok, p_mask, out, pad_id=tok.pad_id, think_tags=think_tags)
  loss_mask = np.array(laid.batch.loss_mask)
  turn_ids = np.zeros(loss_mask.shape, np.int32)
  for i, r in enumerate(rows):  # completion targets, in order, are the generated tokens
    cols = np.flatnonzero(loss_mask[i] > 0)
    turn_ids[i, cols] = r.turn
    loss_mask[i, cols[np.asarray(r.tool, bool)]] = 0.0  # tool tokens: read, never trained
  texts = [tok.decode([t for t in r.ids if t != tok.eos_id]) for r in rows]
  samples = [
    rewards.Sample.from_problem(
      problems[i // g], texts[i], num_tokens=int(lengths[i]), truncated=not finished[i]
    )
    for i in range(b)
  ]
  reward, metrics, correct = score_samples(samples, problems, spec, pool)
  info = {
    "void": np.asarray([r.void for r in rows]),
    "tool_calls": np.asarray([r.calls for r in rows], np.int32),
    "failed_calls": np.asarray([r.failed_calls for r in rows], np.int32),
    "turns": np.asarray([max(r.turn, default=0) for r in rows], np.int32),
    "turn_ids": turn_ids,
  }
  groups = Groups(
    batch=laid.batch.replace(loss_mask=loss_mask),
    sampler_logp=laid.filtered_logp,
    raw_logp=laid.sampler_logp,
    rewards=reward,
    correct=correct,
    truncated=~finished,
    lengths=lengths,
    completions=texts,
    problems=list(problems),
    info=info,
  )
  return groups, metrics


def tool_metrics(groups) -> dict[str, float]:
  """Per-step tool statistics of ``sample_tool_groups``' groups."""
  info = groups.info
  calls = info["tool_calls"]
  return {
    "tool/void_frac": float(info["void"].mean()),
    "tool/calls_mean": float(calls.mean()),
    "tool/failed_call_frac": float(info["failed_calls"].sum() / max(calls.sum(), 1)),
    "tool/turns_mean": float(info["turns"].mean()),
  }


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(prog="python -m jaxpost.tools.tir", description="tool traces")
  parser.add_argument("out", help="the .jsonl to write")
  parser.add_argument("--levels", default="mul3x3:1.0,mul4x3:1.0")
  parser.add_argument("--n", type=int, default=2000)
  parser.add_argument("--seed", type=int, default=0)
  args = parser.parse_args(argv)
  from jaxpost import config_lib

  write_sft(args.out, config_lib.parse_levels(args.levels), args.n, args.seed)
  return 0


if __name__ == "__main__":
  sys.exit(main())
