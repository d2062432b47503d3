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

``stateful`` (``discft.py``) keeps state of its own across steps (``TrainState.loss_state``,
checkpointed with the run), e.g. one number per dataset example keyed by
``Batch.example_ids``. Its objective reads a frozen reference on the same rows when the
config names one (``config.teacher``; else ``reference`` is None). The registration's
``init_state=`` builds the initial state, ``init_state(num_examples, **hparams)``, and
its ``needs_reference=`` says, from the hyperparameters, whether a reference must be
configured::

    loss(outputs, reference, batch: Batch, state, *, norm: Normalizers, step: i32[],
         total_steps: int, **hparams) -> (loss: f32[], metrics, next_state)

``norm`` holds the global-batch counts (see ``losses/reduce.py``). Both the loss and
every metric must be *additive over micro-batches*: already divided by the global
normalisers, so the train step can sum them across gradient-accumulation steps.
Hyperparameters are keyword-only with defaults: they *are* the loss's config section
(``configs/base.py`` builds ``loss.<name>`` from them) and are validated against the
signature, plus the optional ``check``, before any work starts. A stateful loss's next state
is not summed: micro-batches run in order, each reading the state the one before left
(``train.accumulate_grads``). Every registered loss
runs through the contract test (tests/losses/test_contract.py) by being registered.
"""

from __future__ import annotations

from jaxpost.registry import Registry

LOSSES = Registry(
  "loss",
  families=("token", "policy", "distill", "layers", "model", "stateful"),
  builtins=("jaxpost.losses.*",),  # every module of jaxpost/losses: a new file registers
  contract={
    "token": ("norm",),
    "policy": ("norm", "entropy"),
    "distill": ("norm",),
    "layers": ("norm",),
    "model": ("norm",),
    "stateful": ("norm", "step", "total_steps"),
  },
)

register = LOSSES.register
get = LOSSES.get
names = LOSSES.names
family = LOSSES.family
hparams = LOSSES.hparams


def init_state(name: str, hparams: dict, num_examples: int):
  """The initial ``TrainState.loss_state`` of loss ``name`` (None if it keeps none).

  Args:
    name: a registered loss.
    hparams: its hyperparameters (the config section; defaults fill the rest).
    num_examples: distinct example ids of the training data (``Batch.example_ids``).
  """
  init = LOSSES.entry(name).meta.get("init_state")
  if init is None:
    return None
  if num_examples < 1:
    raise ValueError(
      f"loss {name!r} keeps per-example state: its data must say which example each row "
      "is (a source with example ids, e.g. data.source=negatives)"
    )
  return init(num_examples, **{**LOSSES.hparams(name), **dict(hparams)})


def needs_reference(name: str, hparams: dict) -> bool:
  """Whether stateful loss ``name`` with ``hparams`` reads a frozen reference model."""
  fn = LOSSES.entry(name).meta.get("needs_reference")
  return bool(fn and fn(**{**LOSSES.hparams(name), **dict(hparams)}))
