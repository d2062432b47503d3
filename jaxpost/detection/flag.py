"""The FLaG head: latent evidence groups for hallucination detection on a frozen model.

FLaG (arXiv 2606.00301; ``../shared/methods/sft_distill_detect.md`` section 1) reads
several feature families of an answer (hidden states, drift, token-probability
statistics), routes the answer softly to K latent "evidence groups" with an
energy-based router, gives each group its own linear reliability detector and combines
them by a log-marginal. Only the abstract and a third-party note are public: the
router's energy, its temperature, the projection width and the loss are NOT FOUND. Our
reading (the card's SPEC-PROPOSAL), each choice a constructor argument:

  h        = concat_j P_j f_j                (``proj_dim`` > 0; 0 = no projection)
  E_k(h)   = -(w_k . h + b_k)                (``energy="dot"``)
           | ||h - c_k||^2                   (``energy="distance"``)
  log pi_k = log_softmax_k(-E_k(h) / tau)    (``temperature`` tau)
  l_k      = a_k . h + d_k                   group-conditional reliability logit
  log p(correct)   = log sum_k pi_k sigmoid(l_k)    } both through
  log p(incorrect) = log sum_k pi_k sigmoid(-l_k)   } ``pallas_kernels.log_marginal``

The two log-marginals sum to probability 1 exactly (sum_k pi_k = 1), so the BCE loss
is -[y log p(correct) + (1 - y) log p(incorrect)] with no log(1 - p) to cancel; the
pairwise ranking option (the note's "true/false pairs with a ranking loss") is a
logistic loss on the log-odds of every (correct, incorrect) pair of a batch. With
K = 1 the router is constant and the head is a logistic probe on h (on the raw
features when ``proj_dim`` = 0). The paper uses K = 64.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from pallas_kernels.log_marginal import log_marginal

ENERGIES = ("dot", "distance")
LOSSES = ("bce", "ranking")


@jax.tree_util.register_dataclass
@dataclasses.dataclass
class Scores:
  """A head's output for B answers.

  Attributes:
    log_correct: f32[B] log p(correct): the reliability score (higher = trust it).
    log_incorrect: f32[B] log p(incorrect); exp of the two sums to 1.
    log_route: f32[B, K] log pi_k, the router's group weights.
  """

  log_correct: jax.Array
  log_incorrect: jax.Array
  log_route: jax.Array

  @property
  def log_odds(self) -> jax.Array:
    return self.log_correct - self.log_incorrect


class FlagHead(nnx.Module):
  """FLaG over named feature families (module doc).

  Args:
    family_dims: {family name: width} of the features it reads, e.g.
      {"last_hidden": 576, "mean_hidden": 576, "token_stats": 7}.
    groups: K latent groups.
    proj_dim: each family's projection width (0: the families are concatenated as
      they are).
    energy: "dot" or "distance".
    temperature: tau of the router's softmax.
  """

  def __init__(
    self,
    family_dims: Mapping[str, int],
    *,
    groups: int = 64,
    proj_dim: int = 64,
    energy: str = "dot",
    temperature: float = 1.0,
    rngs: nnx.Rngs,
  ):
    if not family_dims:
      raise ValueError("FlagHead needs at least one feature family")
    if groups < 1 or proj_dim < 0 or not temperature > 0:
      raise ValueError(f"groups >= 1, proj_dim >= 0, temperature > 0: got {groups}, "
                       f"{proj_dim}, {temperature}")  # fmt: skip
    if energy not in ENERGIES:
      raise ValueError(f"energy={energy!r}; expected one of {ENERGIES}")
    self.families = tuple(sorted(family_dims))
    self.family_dims = {k: int(family_dims[k]) for k in self.families}
    self.energy, self.temperature, self.groups = energy, float(temperature), groups
    if proj_dim:
      self.proj = nnx.List([nnx.Linear(self.family_dims[k], proj_dim, rngs=rngs)
                            for k in self.families])  # fmt: skip
      width = proj_dim * len(self.families)
    else:
      self.proj = None
      width = sum(self.family_dims.values())
    if energy == "dot":
      self.router = nnx.Linear(width, groups, rngs=rngs)
    else:
      self.centers = nnx.Param(jax.random.normal(rngs.params(), (groups, width)))
    self.reliability = nnx.Linear(width, groups, rngs=rngs)

  def embed(self, features: Mapping[str, jax.Array]) -> jax.Array:
    """h: f32[B, width], the (projected) families side by side in name order."""
    missing = [k for k in self.families if k not in features]
    if missing:
      raise KeyError(f"features lack the families {missing} this head reads")
    parts = []
    for i, k in enumerate(self.families):
      f = jnp.asarray(features[k], jnp.float32)
      if f.ndim != 2 or f.shape[1] != self.family_dims[k]:
        raise ValueError(f"feature {k!r}: shape {f.shape}, expected [B, {self.family_dims[k]}]")
      parts.append(self.proj[i](f) if self.proj is not None else f)
    return jnp.concatenate(parts, axis=-1)

  def route(self, h: jax.Array) -> jax.Array:
    """log pi: f32[B, K]."""
    if self.energy == "dot":
      negative_energy = self.router(h)
    else:
      c = self.centers[...]
      negative_energy = -jnp.sum((h[:, None, :] - c[None]) ** 2, axis=-1)
    return jax.nn.log_softmax(negative_energy / self.temperature, axis=-1)

  def __call__(self, features: Mapping[str, jax.Array]) -> Scores:
    h = self.embed(features)
    log_route = self.route(h)
    logits = self.reliability(h)  # [B, K]
    return Scores(
      log_correct=log_marginal(log_route, jax.nn.log_sigmoid(logits)),
      log_incorrect=log_marginal(log_route, jax.nn.log_sigmoid(-logits)),
      log_route=log_route,
    )


def bce_loss(scores: Scores, labels: jax.Array, weights: jax.Array | None = None) -> jax.Array:
  """Mean of -[y log p(correct) + (1 - y) log p(incorrect)] (``weights``: per answer)."""
  y = labels.astype(jnp.float32)
  per = -(y * scores.log_correct + (1.0 - y) * scores.log_incorrect)
  w = jnp.ones_like(per) if weights is None else weights.astype(jnp.float32)
  return jnp.sum(per * w) / jnp.maximum(jnp.sum(w), 1e-9)


def ranking_loss(scores: Scores, labels: jax.Array, weights: jax.Array | None = None) -> jax.Array:
  """Mean over (correct i, incorrect j) pairs of log(1 + exp(-(o_i - o_j))), o the
  log-odds; 0 when a batch holds one class only."""
  y = labels.astype(jnp.float32)
  w = jnp.ones_like(y) if weights is None else weights.astype(jnp.float32)
  o = scores.log_odds
  pair = (y * w)[:, None] * ((1.0 - y) * w)[None, :]  # [B, B]: i correct, j incorrect
  per = jax.nn.softplus(-(o[:, None] - o[None, :]))
  return jnp.sum(pair * per) / jnp.maximum(jnp.sum(pair), 1e-9)


LOSS_FNS = {"bce": bce_loss, "ranking": ranking_loss}


@dataclasses.dataclass(frozen=True)
class Standardizer:
  """Per-family feature standardisation fitted on the training answers (hidden states
  are large and of very different scales across families)."""

  mean: dict
  std: dict

  @classmethod
  def fit(cls, features: Mapping[str, np.ndarray]) -> Standardizer:
    mean = {k: np.mean(v, axis=0) for k, v in features.items()}
    std = {k: np.maximum(np.std(v, axis=0), 1e-6) for k, v in features.items()}
    return cls(mean, std)

  def __call__(self, features: Mapping[str, np.ndarray]) -> dict:
    return {k: (np.asarray(features[k], np.float32) - self.mean[k]) / self.std[k]
            for k in self.mean}  # fmt: skip


def train_head(
  head: nnx.Module,
  features: Mapping[str, np.ndarray],
  labels: np.ndarray,
  *,
  loss: str = "bce",
  steps: int = 500,
  lr: float = 1e-2,
  weight_decay: float = 1e-4,
  batch_size: int = 256,
  seed: int = 0,
  validation: tuple[Mapping[str, np.ndarray], np.ndarray] | None = None,
  eval_every: int = 10,
) -> tuple[nnx.Module, list[float]]:
  """Trains ``head`` (any module mapping features to ``Scores``) with AdamW on minibatches
  drawn by ``seed``; returns it and the loss of every step.

  With ``validation`` (features, labels of answers it does not train on) the loss there
  is measured every ``eval_every`` steps and after the last, and the head returned is
  the trained one where it was lowest (early stopping: a head on a few hundred answers
  overfits long before ``steps``; never the untrained initialisation, whose random
  scores rank nothing); without, the head after the last step."""
  if loss not in LOSS_FNS:
    raise ValueError(f"loss={loss!r}; expected one of {tuple(LOSS_FNS)}")
  if eval_every < 1:
    raise ValueError(f"eval_every must be >= 1, got {eval_every}")
  loss_fn = LOSS_FNS[loss]
  labels = np.asarray(labels)
  n = labels.shape[0]
  graphdef, params, rest = nnx.split(head, nnx.Param, ...)
  optimizer = optax.adamw(lr, weight_decay=weight_decay)
  opt_state = optimizer.init(params)

  def objective(p, batch, y):
    return loss_fn(nnx.merge(graphdef, p, rest)(batch), y)

  @jax.jit
  def step(params, opt_state, batch, y):
    value, grads = jax.value_and_grad(objective)(params, batch, y)
    updates, opt_state = optimizer.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, value

  held = None
  if validation is not None:
    v_features, v_labels = validation
    held = ({k: jnp.asarray(np.asarray(v_features[k])) for k in features}, jnp.asarray(v_labels))
    held_loss = jax.jit(objective)
  best, best_loss = params, float("inf")

  rng = np.random.default_rng(seed)
  history = []
  for i in range(1, steps + 1):
    rows = rng.choice(n, size=min(batch_size, n), replace=False)
    batch = {k: jnp.asarray(np.asarray(v)[rows]) for k, v in features.items()}
    params, opt_state, value = step(params, opt_state, batch, jnp.asarray(labels[rows]))
    history.append(value)  # fetched once at the end: no host round trip per step
    if held and (i % eval_every == 0 or i == steps):
      now = float(held_loss(params, *held))
      if now < best_loss:
        best, best_loss = params, now
  final = best if held else params
  return nnx.merge(graphdef, final, rest), [float(v) for v in jax.device_get(history)]
