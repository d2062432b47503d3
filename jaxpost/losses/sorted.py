"""Sorted fine-tuning: every chosen depth of the network trained as a language model
through the shared final norm and LM head (more_cards.md, 2).

"Sorted LLaMA" (arXiv 2309.08968; SortedNet's "many-in-one" applied to SFT): one forward
pass, and the SFT loss summed over exits n in S of the hidden state after block n, each
read through the model's own final norm and head, so the sub-models (the first n blocks)
generate directly, with no new parameters. Known from summaries only: the exit set of
the paper (LLaMA-2-13B: every 4th of 40 blocks from 12 on) and RMSNorm before the head;
not found: the per-exit weights and the normalisation of the sum. Ours, configurable:
S = every block by default, weights 1, a plain sum (``combine="mean"`` divides by the
total weight instead). The original SortedNet samples one exit per step; not done here.

Early-exit decoding: a run trained this way is read at exit n with its first n blocks
only (``python -m jaxpost.eval RUN --levels=... --exit=n``; in training,
``model.keep_layers``).
"""

from __future__ import annotations

import chex
import jax

from jaxpost import fields
from jaxpost.losses import reduce
from jaxpost.losses.head import LayerHeads, reduced_nll
from jaxpost.losses.registry import register
from jaxpost.types import Batch

COMBINES = ("sum", "mean")


def _check(*, exits, exit_weights, **_) -> None:
  if exit_weights and len(exit_weights) != len(exits):
    raise ValueError(
      f"exit_weights {tuple(exit_weights)} needs one weight per exit of {tuple(exits)}"
    )
  if len(set(exits)) != len(exits):
    raise ValueError(f"exits {tuple(exits)} repeat a layer")


def _ints(value) -> None:
  if not isinstance(value, tuple | list) or not all(
    isinstance(v, int) and not isinstance(v, bool) for v in value
  ):
    raise TypeError(f"{value!r} is not a tuple of ints")


def _numbers(value) -> None:
  if not isinstance(value, tuple | list) or not all(
    isinstance(v, int | float) and not isinstance(v, bool) and v >= 0 for v in value
  ):
    raise TypeError(f"{value!r} is not a tuple of numbers >= 0")


RULES = {
  "exits": fields.Custom("a tuple of block indices (negative from the end)", _ints),
  "exit_weights": fields.Custom("a tuple of weights >= 0, one per exit", _numbers),
  "combine": fields.one_of(COMBINES),
  "reduction": fields.one_of(reduce.REDUCTIONS),
}


def exit_layers(exits, n_layers: int) -> tuple[int, ...]:
  """The exits as block indices 0..n_layers-1 (every block when ``exits`` is empty)."""
  if not exits:
    return tuple(range(n_layers))
  out = []
  for e in exits:
    if not -n_layers <= e < n_layers:
      raise ValueError(f"exit {e} out of range for {n_layers} layers")
    out.append(e % n_layers)
  return tuple(out)


@register("sorted_ft", family="layers", rules=RULES, check=_check)
def sorted_ft(
  layers: LayerHeads,
  batch: Batch,
  *,
  norm: reduce.Normalizers,
  exits: tuple = (),
  exit_weights: tuple = (),
  combine: str = "sum",
  reduction: str = "token_mean",
) -> tuple[jax.Array, dict[str, jax.Array]]:
  """sum_{n in S} lambda_n CE(head(final_norm(h_n)), y) (module docstring).

  Args:
    layers: every layer's exit (``LayerHeads``).
    batch: uses targets, loss_mask, segment_ids, and ``weights`` when given.
    norm: global normalisers.
    exits: block indices of S (negative count from the end; () = every block). With
      (-1,) this is exactly cross-entropy.
    exit_weights: lambda_n per exit (() = 1 each).
    combine: "sum" (the card's) or "mean" (divided by the sum of the weights).
    reduction: "token_mean" or "sequence_mean" of each exit's CE.

  Returns:
    (loss f32[], metrics: nll/exit<n> for each exit (n counts blocks from 1, so the
    last is the model's own output)), additive over micro-batches.
  """
  chex.assert_rank([batch.targets, batch.loss_mask], 2)
  mask = batch.loss_mask
  weights = batch.token_weights
  chosen = exit_layers(exits, layers.n_layers)
  lambdas = tuple(exit_weights) or (1.0,) * len(chosen)

  def reduce_fn(x):
    return reduce.reduce(x * weights, mask, batch.segment_ids, norm, reduction)

  loss, metrics = 0.0, {}
  for n, lam in zip(chosen, lambdas, strict=True):
    ce, stats = reduced_nll(layers.exit(n), batch.targets, mask, reduce_fn)
    loss = loss + lam * ce
    metrics[f"nll/exit{n + 1}"] = reduce.token_mean(-jax.lax.stop_gradient(stats.logp), mask, norm)
  if combine == "mean":
    loss = loss / sum(lambdas)
  return loss, metrics
