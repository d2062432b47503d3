"""The shared config sections, with their defaults and meaning. Method configs start here.

``get_config(recipe)`` returns these sections plus what the recipe declares
(``jaxpost.recipes.add_config_sections``): its own section (e.g. ``rl`` and ``reward``) and
one ``loss.<name>`` section per registered loss of the families it trains, built from
that loss's keyword defaults (documented in its docstring). The result is locked: a
method file or a command line that sets an unknown key fails.
"""

from ml_collections import config_dict

from jaxpost.config_lib import DTYPES, FINAL_LEVELS, OPTIONAL_LEVELS, parse_condition
from jaxpost.data import sources
from jaxpost.data.corrupt import check as check_corrupt
from jaxpost.data.masked_copy import check_ratio as check_masked_ratio
from jaxpost.data.packing import OVERLONG_CHOICES
from jaxpost.data.pipeline import check_prompt_tags
from jaxpost.data.privileged import PRIVILEGED
from jaxpost.fields import FLAG, PATTERN, TEXT, Custom, Text, declare, integer, num, one_of
from jaxpost.losses import LOSSES
from jaxpost.losses.head import LM_HEADS
from jaxpost.models import NAMED_SIZES
from jaxpost.models.decoder import LORA_INITS
from jaxpost.optim import OPTIMIZERS, SCHEDULES
from jaxpost.peft.lora import check_adapter_name


def get_config(recipe: str = "sft") -> config_dict.ConfigDict:
  from jaxpost import recipes

  c = shared_sections()
  c.recipe = recipe  # outer loop to run: one of jaxpost.recipes.RECIPES
  c.seed = 0  # seeds parameter init, data order and sampling
  declare("", recipe=one_of(recipes.RECIPES.names), seed=integer(ge=0))
  recipes.add_config_sections(c, recipe)
  c.lock()
  return c


def shared_sections() -> config_dict.ConfigDict:
  c = config_dict.ConfigDict()

  c.model = config_dict.ConfigDict()
  c.model.size = "tiny"  # named size in jaxpost.models.NAMED_SIZES
  c.model.hf_dir = ""  # start from a Hugging Face checkpoint dir instead (overrides model.size)
  c.model.gguf = ""  # or from a GGUF file / packaged model name ("smollm2"); its tokenizer too
  c.model.dtype = "float32"  # compute dtype: float32 | bfloat16
  c.model.param_dtype = "float32"  # parameter dtype: float32 | bfloat16
  c.model.max_seq_len = 256  # longest sequence the model (and KV cache) supports
  c.model.remat = False  # recompute each block in the backward pass: less memory, +1 forward
  # Depth pruning: a shallower model (e.g. a student) from a deeper one's weights.
  c.model.keep_layers = ""  # blocks kept of the built model: "" = all, "0,5,10", "0:30:3"
  declare(
    "model",
    size=one_of(NAMED_SIZES),
    hf_dir=TEXT,
    gguf=TEXT,
    dtype=one_of(DTYPES),
    param_dtype=one_of(DTYPES),
    max_seq_len=integer(ge=2),
    remat=FLAG,
    keep_layers=TEXT,
  )

  c.tokenizer = config_dict.ConfigDict()
  c.tokenizer.path = ""  # .model / tokenizer.json / .gguf / smollm2, a run or zoo:NAME; "" = train
  c.tokenizer.vocab_size = 512  # vocabulary size when training a sentencepiece model
  c.tokenizer.byte_fallback = True  # trained tokenizer: unseen characters as UTF-8 bytes (+256 ids)
  c.tokenizer.train_examples = 20_000  # examples of training text for tokenizer training
  declare(
    "tokenizer",
    path=TEXT,
    vocab_size=integer(ge=8),
    byte_fallback=FLAG,
    train_examples=integer(ge=1),
  )

  c.data = config_dict.ConfigDict()
  # tasks | jsonl | parquet | arrow (datasets' save_to_disk) | tfds | pairs (chosen/rejected
  # JSONL) | rationales (teacher responses -> label + rationale tasks, distilling step-by-step)
  # | choices (the task levels as multi-format multiple choice, F²C) | negatives (gold +
  # negatives JSONL, discriminative fine-tuning)
  c.data.source = "tasks"  # where training examples come from (jaxpost/data/sources.py)
  c.data.levels = "mul2x2:1.0"  # tasks source: comma-separated level:weight mixture
  c.data.path = ""  # .jsonl file; .parquet file or dir; save_to_disk dir; tfds name or dir
  c.data.split = "train"  # tfds / arrow (DatasetDict) source: split to read
  c.data.skip_malformed = False  # user data: skip (and count) malformed records, not fail
  c.data.eval_fraction = 0.0  # user data: hold out this fraction of data.path (fixed draw)
  c.data.eval_path = ""  # user data: held-out file / dir of the same source ("" = data.path)
  c.data.eval_split = ""  # tfds / arrow: held-out split, e.g. "test" ("" = none)
  c.data.seq_len = 128  # tokens per packed row
  c.data.batch_size = 64  # rows per optimiser step (global batch)
  c.data.pack = True  # several examples per row (segment ids keep them apart)
  c.data.overlong = "error"  # example longer than seq_len: truncate | reject | error
  c.data.streams = 1  # packing streams the batch is split into; hosts pack only their streams
  # e.g. TLDR's length tags seen (and ignored) in SFT before RL gives them a meaning
  c.data.prompt_tags = ()  # tasks source: example i's prompt starts with tag i mod K; () = none
  # Known corruptions of the tasks' traces, their tokens marked (jaxpost/data/corrupt.py)
  c.data.corrupt = ""  # "" | "noise:0.3" | "repeat:0.3" | "noise:0.2,repeat:0.2"
  # T3S: a dir of per-batch keep masks (python -m jaxpost.data.token_selection), or "online"
  # (detect the bottleneck from the eval accuracy, then drop anchors); "" = off
  c.data.token_selection = ""  # the loss mask of each batch is multiplied by its mask
  c.data.t3s_margin = 0.02  # online: accuracy fall, then recovery, that marks the bottleneck
  # Masked Thought (jaxpost/data/masked_thought.py): response tokens of the *input* replaced by
  # the pad token with probability p, rising linearly to this over the first warmup fraction
  c.data.mask_thought = 0.0  # p_max (the paper: 0.4 GSM8K, 0.2 MATH); 0 = off
  c.data.mask_thought_warmup = 0.66  # fraction of train.steps before the rate reaches p_max
  # Masked fine-tuning (jaxpost/data/masked_copy.py): this fraction of the examples gets a
  # copy of its response, each token masked with prob r ~ U(ratio), in the prompt
  c.data.masked_copy = 0.0  # fraction of examples made demasking examples; 0 = off
  c.data.masked_copy_ratio = (0.05, 0.95)  # (low, high) of the per-example mask ratio r
  # choices source (F²C, jaxpost/data/choices.py): each problem in K prompt formats x C
  # answer choices, K*C adjacent rows (needs data.pack=False)
  c.data.choice_formats = "plain,paren,equals,commuted"  # the K formats, of data.choices.FORMATS
  c.data.choices = 4  # C: the answer and C - 1 distractors
  c.data.choice_response = "answer"  # answer (direct, the number) | solution (worked, slipped)
  # negatives source (DiscFT, jaxpost/data/negatives.py): a gold response and m of the record's
  # negatives, 1 + m adjacent rows (needs data.pack=False); fresh ones each epoch
  c.data.negatives = 2  # m: negatives per example per epoch (<= those in each record)
  declare(
    "data",
    source=one_of(sources.names()),  # jaxpost/data/sources.py
    negatives=integer(ge=1),
    choice_formats=TEXT,
    choices=integer(ge=2),
    choice_response=one_of(("answer", "solution")),
    token_selection=TEXT,
    t3s_margin=num(ge=0, le=1),
    mask_thought=num(ge=0, lt=1),
    mask_thought_warmup=num(ge=0),
    masked_copy=num(ge=0, le=1),
    masked_copy_ratio=Custom("(low, high) with 0 <= low <= high <= 1", check_masked_ratio),
    levels=OPTIONAL_LEVELS,  # the tasks source needs one (config_lib.validate)
    path=TEXT,
    split=TEXT,
    skip_malformed=FLAG,
    eval_fraction=num(ge=0, lt=1),
    eval_path=TEXT,
    eval_split=TEXT,
    seq_len=integer(ge=2),
    batch_size=integer(ge=1),
    pack=FLAG,
    overlong=one_of(OVERLONG_CHOICES),
    streams=integer(ge=1),
    prompt_tags=Custom("a tuple of non-empty strings", check_prompt_tags),
    corrupt=Custom("KIND:FRACTION[,KIND:FRACTION] with KIND noise | repeat", check_corrupt),
  )

  c.loss = config_dict.ConfigDict()
  c.loss.name = "cross_entropy"  # key in the loss registry; loss.<name> holds its hyperparameters
  declare("loss", name=one_of(LOSSES.names))  # loss.<name>.*: the loss's own rules

  # A frozen teacher, read by distill-family losses (SFT recipe) and by token rewards that
  # need teacher_logp (RL recipe); loaded only when one does. It must use the trained
  # model's token ids (its tokenizer); its size and architecture may differ.
  c.teacher = config_dict.ConfigDict()
  c.teacher.size = ""  # named size of a teacher built fresh ("" = model.size); with init_from
  c.teacher.hf_dir = ""  # or a Hugging Face checkpoint dir
  c.teacher.gguf = ""  # or a GGUF file / packaged model name ("smollm2")
  c.teacher.init_from = ""  # a run's workdir or zoo:NAME[@SEED] whose latest params it loads
  c.teacher.offline = ""  # or a dir of its top-k log-probs (python -m jaxpost.data.teacher_shards)
  # The teacher also sees privileged text in its prompt: "" | answer | trace | skill (tasks;
  # one example per row). With no teacher model named, the teacher is the student itself.
  c.teacher.privileged = ""  # what the teacher's prompt gains (jaxpost/data/privileged.py)
  c.teacher.privileged_tokens = 64  # extra columns of the teacher's rows for that text
  # Or a copy of the student that follows it (jaxpost/optim.py follow_params), kept in the
  # optimizer state: "lagged" = its parameters as of the last multiple of sync_every steps
  # (Skill-SD's synced teacher), "ema" = their moving average (decay per optimiser update).
  c.teacher.follow = ""  # "" | lagged | ema
  c.teacher.sync_every = 10  # lagged: steps between syncs (recipe steps: RL steps in rl)
  c.teacher.ema_decay = 0.99  # ema: copy <- decay * copy + (1 - decay) * params
  # Embeddings padded to different sizes past the tokenizer's ids: compare ids [0, N) only.
  c.teacher.shared_vocab = 0  # N; 0 = the two vocabulary sizes must match
  declare(
    "teacher",
    size=Text("a named size", check=_check_size),
    hf_dir=TEXT,
    gguf=TEXT,
    init_from=TEXT,
    offline=TEXT,
    privileged=one_of(PRIVILEGED),
    privileged_tokens=integer(ge=0),
    follow=one_of(("", "lagged", "ema")),
    sync_every=integer(ge=1),
    ema_decay=num(ge=0, lt=1),
    shared_vocab=integer(ge=0),
  )

  c.kernels = config_dict.ConfigDict()
  # fused* = pallas_kernels.fused_linear_divergence: same values, no [B*T, V] buffer
  c.kernels.lm_head = "logits"  # logits (materialise [B, T, V]) | fused | fused_xla | fused_pallas
  c.kernels.chunk_size = 0  # token rows per chunk of the fused op (0 = automatic)
  declare("kernels", lm_head=one_of(lambda: sorted(LM_HEADS)), chunk_size=integer(ge=0))

  c.optim = config_dict.ConfigDict()
  c.optim.name = "adamw"  # adamw | sgd
  c.optim.lr = 3e-4  # peak learning rate
  c.optim.warmup_steps = 50  # linear warmup from 0
  c.optim.decay = "cosine"  # cosine | linear | constant, after warmup
  c.optim.final_lr_frac = 0.1  # final lr as a fraction of peak
  c.optim.weight_decay = 0.01  # decoupled weight decay (adamw)
  c.optim.b1 = 0.9  # adam beta1 (sgd: momentum, 0 = none)
  c.optim.b2 = 0.95  # adam beta2
  c.optim.eps = 1e-8  # adam epsilon
  c.optim.grad_clip = 1.0  # clip by global norm; 0 = off
  # (l2 / 2) ||theta - theta_0||^2 on what trains, theta_0 = its start: RegLoRA's
  # L2-to-initialisation for LoRA adapters, L2-SP for full fine-tuning.
  c.optim.l2_to_start = 0.0  # l2; 0 = off
  declare(
    "optim",
    name=one_of(OPTIMIZERS),
    lr=num(gt=0),
    warmup_steps=integer(ge=0),
    decay=one_of(SCHEDULES),
    final_lr_frac=num(ge=0, le=1),
    weight_decay=num(ge=0),
    b1=num(ge=0, lt=1),
    b2=num(ge=0, lt=1),
    eps=num(ge=0),
    grad_clip=num(ge=0),
    l2_to_start=num(ge=0),
  )

  c.mesh = config_dict.ConfigDict()
  c.mesh.data = -1  # data-parallel axis: splits batch rows; -1 = the devices left over
  c.mesh.fsdp = 1  # fully-sharded data parallel: splits batch rows and params' embed axis
  c.mesh.tensor = 1  # tensor parallel: splits heads, MLP width and vocabulary
  declare("mesh", **dict.fromkeys(("data", "fsdp", "tensor"), integer(ge=1, special=(-1,))))

  c.distributed = config_dict.ConfigDict()
  c.distributed.initialize = False  # multi-host: call jax.distributed.initialize() first
  c.distributed.coordinator_address = ""  # host:port of process 0; "" = from the environment
  c.distributed.num_processes = 0  # processes in the job; 0 = from the environment
  c.distributed.process_id = -1  # this process's index; -1 = from the environment
  declare(
    "distributed",
    initialize=FLAG,
    coordinator_address=TEXT,
    num_processes=integer(ge=0),
    process_id=integer(ge=-1),
  )

  c.train = config_dict.ConfigDict()
  c.train.steps = 1000  # optimiser updates in total (0 = only evaluate the start)
  c.train.microbatches = 1  # gradient accumulation splits of the global batch
  c.train.log_every = 25  # steps between metric lines
  c.train.checkpoint_every = 250  # steps between checkpoints (and one at the end)
  c.train.keep_checkpoints = 2  # checkpoints kept on disk
  c.train.async_checkpoint = True  # save in a background thread
  c.train.max_minutes = 0.0  # stop (with a checkpoint) after this wall time; 0 = no limit
  c.train.max_nonfinite_steps = 10  # consecutive NaN/inf steps (each skipped) before the run stops
  c.train.allow_changes = False  # resume even if the config or data differ from run.json's
  c.train.stop_after = 0  # stop (with a checkpoint) after this many steps of this run; 0 = never
  # End the run at this step (checkpoint + final evaluation) on the schedule of train.steps.
  # Counted from step 0, unlike stop_after, so a resumed run ends where it would have.
  c.train.stop_at = 0  # 0 = train.steps
  c.train.stop_when = ""  # end at an evaluation meeting this, e.g. "eval/accuracy>=0.6"; "" = never
  c.train.progress = True  # tqdm progress bar
  c.train.export_hf = False  # also write the final model to <workdir>/hf (transformers; LoRA:
  # merged, and the adapter alone in the PEFT format to <workdir>/hf_adapter)
  # A run's workdir or zoo:NAME[@SEED] to start from (its tokenizer + latest params).
  c.train.init_from = ""  # "" = a fresh initialisation
  # "fork" also takes init_from's optimizer moments, step, schedule, RNG and data position.
  c.train.init_mode = "params"  # "params": init_from's latest parameters; "fork": continue it
  c.train.trainable = ""  # regex over parameter paths that train (e.g. "attn"); "" = all
  # Head-sparse tuning (jaxpost/peft/heads.py): only these attention heads' q/k/v/o slices
  # train, e.g. "0:1,3;2:0" (layer:heads), "*:0", or a JSON file of P2D's head scores.
  c.train.heads = ""  # "" = off
  c.train.heads_kv = "any"  # GQA: a kv head trains when any | all of its query heads do; none
  declare(
    "train",
    steps=integer(ge=0),
    microbatches=integer(ge=1),
    log_every=integer(ge=1),
    checkpoint_every=integer(ge=1),
    keep_checkpoints=integer(ge=1),
    async_checkpoint=FLAG,
    max_minutes=num(ge=0),
    max_nonfinite_steps=integer(ge=1),
    allow_changes=FLAG,
    stop_after=integer(ge=0),
    stop_at=integer(ge=0),
    stop_when=Text("a condition METRIC>=VALUE (or >, <=, <)", check=parse_condition),
    progress=FLAG,
    export_hf=FLAG,
    init_from=TEXT,
    init_mode=one_of(("params", "fork")),
    trainable=PATTERN,
    heads=TEXT,
    heads_kv=one_of(("any", "all", "none")),
  )

  # LoRA adapters on the trained model (jaxpost/peft/lora.py): only they train, the base
  # stays bit-identical and checkpoints hold the adapters (the base is rebuilt from
  # model.* / train.init_from). Works in every recipe and on imported HF / GGUF models.
  c.lora = config_dict.ConfigDict()
  c.lora.rank = 0  # r; 0 = no adapters (full or train.trainable fine-tuning)
  c.lora.alpha = 16.0  # scale = alpha / r (alpha / sqrt(r) with rslora)
  c.lora.rslora = False  # rank-stabilised scaling
  c.lora.targets = r"attn\.(q|k|v|o)_proj$"  # regex over linear paths: layers.3.mlp.up_proj
  c.lora.init = "kaiming"  # A's init: kaiming (PEFT's default) | gaussian; B = 0
  c.lora.name = "default"  # the adapter's name (a model may carry several)
  c.lora.dropout = 0.0  # dropout on the adapters' inputs in train steps (not the LM head's)
  declare(
    "lora",
    dropout=num(ge=0, lt=1),
    rank=integer(ge=0),
    alpha=num(gt=0),
    rslora=FLAG,
    targets=PATTERN,
    init=one_of(LORA_INITS),
    name=Text("letters, digits and _", check=check_adapter_name),
  )

  c.eval = config_dict.ConfigDict()
  c.eval.every = 250  # steps between held-out evaluations (and one at the end); 0 = end only
  c.eval.levels = ""  # levels to report; "" = the training levels
  c.eval.final_levels = ""  # extra levels reported only at the end ("all" = every level)
  c.eval.num_examples = 200  # held-out problems per level
  c.eval.batch_size = 200  # prompts decoded at once
  c.eval.max_new_tokens = 96  # generation budget per answer
  c.eval.checker = "exact_match"  # held-out user data: jaxpost.eval.checkers name or mod:fn
  # Stop control at evaluation (jaxpost/rollout/sampler.py), training-free: TLDR's
  # temperature scaling adds stop_bias to the EOS (and a one-token close-think tag) logit;
  # s1's budget forcing writes the close-think tag once force_after tokens are spent.
  c.eval.stop_bias = 0.0  # logit shift of the stop tokens while decoding; 0 = off
  c.eval.force_after = 0  # tokens before the close-think tag is forced; 0 = off
  c.eval.prompt_prefix = ""  # put before every held-out task prompt (e.g. a TLDR level tag)
  c.eval.prompt_suffix = ""  # and after it (prefix "What is ", suffix "?": a chat question)
  c.eval.tool_turns = 0  # > 0: answers are tool rollouts (jaxpost/tools/tir.py), this many turns
  c.eval.pass_k = 0  # > 0: also k samples per problem: eval/pass_k/<level>, eval/distinct/<level>
  c.eval.sample_temperature = 1.0  # the temperature of those samples
  # choices source: the formats the multiple-choice evaluation asks in (e.g. held-out ones)
  c.eval.choice_formats = ""  # "" = data.choice_formats
  declare(
    "eval",
    tool_turns=integer(ge=0),
    pass_k=integer(ge=0),
    sample_temperature=num(gt=0),
    choice_formats=TEXT,
    prompt_prefix=TEXT,
    prompt_suffix=TEXT,
    stop_bias=num(),
    force_after=integer(ge=0),
    every=integer(ge=0),
    levels=OPTIONAL_LEVELS,
    final_levels=FINAL_LEVELS,
    num_examples=integer(ge=1),
    batch_size=integer(ge=1),
    max_new_tokens=integer(ge=1),
    checker=TEXT,
  )

  return c


def _check_size(size: str) -> None:
  if size and size not in NAMED_SIZES:
    raise ValueError(f"unknown size {size!r}; expected one of {sorted(NAMED_SIZES)}")
