"""P2D: task-sensitive heads -> the data they favour -> those heads trained on that data
(``recipe=p2d``, jaxpost/recipes/p2d.py; AER defined there).

Variants:
  ``default``  from the zoo's ``student-mul2x2-40`` (the quickstart stopped at ~40%
               held-out mul2x2), a pool of 2000 examples of five levels (add3, add5,
               mul2x2, mul3x2, expr2, equal weights); the target task is mul2x2: 100
               proxy examples (30 full fine-tuning steps), 16 ICL queries, 3
               demonstrations per context (the tiny model's 256 positions); 10% of
               the heads (1 of the tiny model's 8) and 10% of the pool (200
               examples), 3 epochs of AdamW at lr 1e-3, batch 16
  ``tiny``     the zoo's ``tiny-sft``, a pool of 48, 8 proxy examples, 2 steps; seconds
               (tests)

  python -m jaxpost.main --config=configs/p2d.py --workdir=runs/p2d
  python -m jaxpost.main --config=configs/p2d.py --workdir=runs/full \\
      --config.p2d.heads=all --config.p2d.data=all      # the reference (AER = 1)
"""

from jaxpost.config_lib import load_sibling


def get_config(variant: str = "default"):
  c = load_sibling(__file__, "base").get_config("p2d")
  c.model.size = "tiny"
  c.data.levels = "add3:1.0,add5:1.0,mul2x2:1.0,mul3x2:1.0,expr2:1.0"
  c.data.seq_len = 80  # add5 examples are ~70 tokens with the template
  c.data.pack = False
  c.data.batch_size = 16
  c.optim.lr = 1e-3
  c.optim.warmup_steps = 5
  c.optim.weight_decay = 0.0
  c.p2d.target = "mul2x2"
  c.p2d.n_demo = 3
  c.train.steps = 0  # unused: the adaptation's steps follow from p2d.epochs
  c.train.log_every = 10
  c.train.checkpoint_every = 100_000
  c.eval.every = 0
  c.eval.levels = "mul2x2"
  c.eval.num_examples = 200
  c.eval.batch_size = 100
  if variant == "default":
    c.train.init_from = "zoo:student-mul2x2-40"
  elif variant == "tiny":
    c.train.init_from = "zoo:tiny-sft"
    c.data.batch_size = 8
    c.p2d.pool = 48
    c.p2d.proxy_examples = 8
    c.p2d.proxy_steps = 2
    c.p2d.queries = 4
    c.p2d.n_demo = 2
    c.p2d.n_query = 2
    c.p2d.head_fraction = 0.25
    c.p2d.data_fraction = 0.25
    c.p2d.epochs = 1.0
    c.eval.num_examples = 8
    c.eval.batch_size = 8
    c.eval.max_new_tokens = 8
  else:
    raise ValueError(f"unknown variant {variant!r}; expected default | tiny")
  return c
