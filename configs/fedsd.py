"""Federated LoRA fine-tuning: FedAvg / FedOpt, FedSD and FedSDR (``recipe=federated``,
jaxpost/recipes/federated.py).

Variants:
  ``tiny``     the zoo's ``tiny-sft`` as the global start, 4 clients of 64 add3 /
               mul2x2 problems split by level, FedSDR for 2 rounds of 2 local steps;
               seconds (tests)
  ``default``  the zoo's ``student-mul2x2-40`` (the quickstart stopped at ~40% held-out
               mul2x2) as the global start; 2000 add3 / mul2x2 problems over 4
               clients, non-IID by Dirichlet(0.3) over the levels; LoRA r = 8 on every
               attention and MLP projection; 30 rounds of 10 local AdamW steps (batch
               16, constant lr 3e-3: the client optimiser restarts every round);
               FedSDR; a few minutes

  python -m jaxpost.main --config=configs/fedsd.py --workdir=runs/fedsdr
  python -m jaxpost.main --config=configs/fedsd.py --workdir=runs/fedavg \\
      --config.fed.method=fedavg --config.fed.aggregator=fedyogi
"""

from jaxpost.config_lib import load_sibling


def get_config(variant: str = "default"):
  c = load_sibling(__file__, "base").get_config("federated")
  c.model.size = "tiny"
  c.lora.rank = 8
  c.lora.alpha = 16.0
  c.lora.targets = r"(attn\.(q|k|v|o)_proj|mlp\.(gate|up|down)_proj)$"
  c.optim.lr = 3e-3
  c.optim.warmup_steps = 0  # the client optimiser restarts every round
  c.optim.decay = "constant"
  c.optim.weight_decay = 0.0
  c.data.pack = False  # one example per row: each client's batch is its own examples
  c.data.seq_len = 52  # the longest mul2x2 example
  c.data.batch_size = 16
  c.fed.method = "fedsdr"
  c.train.log_every = 1
  c.train.checkpoint_every = 10
  c.eval.every = 10
  c.eval.num_examples = 200
  c.eval.batch_size = 200
  if variant == "default":
    c.train.init_from = "zoo:student-mul2x2-40"
    c.data.levels = "add3:1.0,mul2x2:1.0"
    c.fed.partition = "dirichlet"
    c.fed.alpha = 0.3
    c.fed.examples = 2000
    c.fed.local_steps = 10
    c.train.steps = 30
  elif variant == "tiny":
    c.train.init_from = "zoo:tiny-sft"
    c.data.levels = "add3:1.0,mul2x2:1.0"
    c.data.batch_size = 8
    c.fed.examples = 64
    c.fed.local_steps = 2
    c.fed.rewrite_max_tokens = 16
    c.train.steps = 2
    c.train.checkpoint_every = 1
    c.eval.every = 0
    c.eval.num_examples = 8
    c.eval.batch_size = 8
    c.eval.max_new_tokens = 8
  else:
    raise ValueError(f"unknown variant {variant!r}; expected default | tiny")
  return c
