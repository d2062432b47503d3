"""Loss registry: config name -> loss function, by family.

Each family has one contract, and the train step builds its objective from the family
(``train.OBJECTIVES``), so a new loss is one registered function, never a recipe edit.

``token`` (SFT and its token-level variants; ``sft.py``, ``token_priority.py``)::

    loss(outputs: f32[B, T, V] | FusedHead, batch: Batch, *, norm: Normalizers, **hparams)
        -> (loss: f32[], metrics: dict[str, f32[]])

``policy`` (the GRPO family; ``policy.py``) takes the current policy's log-probs::

    loss(logp: f32[B, T], rollout: Rollout, *, norm: Normalizers, entropy=None, **hparams)
        -> (loss: f32[], metrics: dict[str, f32[]])

``distill`` (``distill.py``) takes the student's outputs and a frozen teacher's at the
same positions (logits, a ``FusedHead`` or a top-k ``TopK``)::

    loss(outputs, teacher, batch: Batch, *, norm: Normalizers, **hparams)
        -> (loss: f32[], metrics: dict[str, f32[]])

``layers`` (``sorted.py``) reads every layer's exit through the shared final norm and LM
head (``head.LayerHeads``; one forward pass)::

    loss(layers: LayerHeads, batch: Batch, *, norm: Normalizers, **hparams)
        -> (loss: f32[], metrics: dict[str, f32[]])

``model`` (``lfu.py``) runs the trained model's forward passes itself, e.g. again with
its representations perturbed (``scoring.ModelView``)::

    loss(model: ModelView, batch: Batch, *, norm: Normalizers, **hparams)
        -> (loss: f32[], metrics: dict[str, f32[]])

``norm`` holds the global-batch counts (see ``losses/reduce.py``). Both the loss and
every metric must be *additive over micro-batches*: already divided by the global
normalisers, so the train step can sum them across gradient-accumulation steps.
Hyperparameters are keyword-only with defaults: they *are* the loss's config section
(``configs/base.py`` builds ``loss.<name>`` from them) and are validated against the
signature, plus the optional ``check``, before any work starts. Every registered loss
runs through the contract test (tests/losses/test_contract.py) by being registered.
"""

from __future__ import annotations

from jaxpost.registry import Registry

LOSSES = Registry(
  "loss",
  families=("token", "policy", "distill", "layers", "model"),
  builtins=("jaxpost.losses.*",),  # every module of jaxpost/losses: a new file registers
  contract={
    "token": ("norm",),
    "policy": ("norm", "entropy"),
    "distill": ("norm",),
    "layers": ("norm",),
    "model": ("norm",),
  },
)

register = LOSSES.register
get = LOSSES.get
names = LOSSES.names
family = LOSSES.family
hparams = LOSSES.hparams
