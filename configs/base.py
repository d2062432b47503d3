"""Every jaxpost config field, with its default and meaning. Method configs start here."""

from ml_collections import config_dict


def get_config() -> config_dict.ConfigDict:
  c = config_dict.ConfigDict()
  c.recipe = "sft"  # outer loop to run: one of jaxpost.recipes.RECIPES
  c.seed = 0  # seeds parameter init, data order and sampling

  c.model = config_dict.ConfigDict()
  c.model.size = "tiny"  # named size in jaxpost.models.NAMED_SIZES
  c.model.hf_dir = ""  # start from a Hugging Face checkpoint dir instead (overrides model.size)
  c.model.dtype = "float32"  # compute dtype: float32 | bfloat16
  c.model.param_dtype = "float32"  # parameter dtype: float32 | bfloat16
  c.model.max_seq_len = 256  # longest sequence the model (and KV cache) supports

  c.tokenizer = config_dict.ConfigDict()
  c.tokenizer.path = ""  # .model (sentencepiece) or tokenizer.json; "" = train one in workdir
  c.tokenizer.vocab_size = 512  # vocabulary size when training a sentencepiece model
  c.tokenizer.byte_fallback = True  # trained tokenizer: unseen characters as UTF-8 bytes (+256 ids)
  c.tokenizer.train_examples = 20_000  # examples of training text for tokenizer training

  c.data = config_dict.ConfigDict()
  c.data.source = "tasks"  # tasks | jsonl | tfds
  c.data.levels = "mul2x2:1.0"  # tasks source: comma-separated level:weight mixture
  c.data.path = ""  # jsonl source: path of a .jsonl file; tfds source: dataset name or dir
  c.data.split = "train"  # tfds source: split to read
  c.data.skip_malformed = False  # jsonl: skip (and count) malformed lines instead of failing
  c.data.seq_len = 128  # tokens per packed row
  c.data.batch_size = 64  # rows per optimiser step (global batch)
  c.data.pack = True  # several examples per row (segment ids keep them apart)
  c.data.overlong = "error"  # example longer than seq_len: truncate | reject | error
  c.data.streams = 1  # packing streams the batch is split into; hosts pack only their streams

  c.loss = config_dict.ConfigDict()
  c.loss.name = "cross_entropy"  # key in the loss registry (jaxpost.losses)
  c.loss.reduction = "token_mean"  # token_mean | sequence_mean
  c.loss.label_smoothing = 0.0  # mass spread uniformly over the vocabulary
  c.loss.z_loss = 0.0  # coefficient of the logZ^2 stabiliser

  c.kernels = config_dict.ConfigDict()
  # fused* = pallas_kernels.fused_linear_divergence: same values, no [B*T, V] buffer
  c.kernels.lm_head = "logits"  # logits (materialise [B, T, V]) | fused | fused_xla | fused_pallas
  c.kernels.chunk_size = 0  # token rows per chunk of the fused op (0 = automatic)

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

  c.mesh = config_dict.ConfigDict()
  c.mesh.data = -1  # data-parallel axis: splits batch rows; -1 = the devices left over
  c.mesh.fsdp = 1  # fully-sharded data parallel: splits batch rows and params' embed axis
  c.mesh.tensor = 1  # tensor parallel: splits heads, MLP width and vocabulary

  c.distributed = config_dict.ConfigDict()
  c.distributed.initialize = False  # multi-host: call jax.distributed.initialize() first
  c.distributed.coordinator_address = ""  # host:port of process 0; "" = from the environment
  c.distributed.num_processes = 0  # processes in the job; 0 = from the environment
  c.distributed.process_id = -1  # this process's index; -1 = from the environment

  c.train = config_dict.ConfigDict()
  c.train.steps = 1000  # optimiser updates in total
  c.train.microbatches = 1  # gradient accumulation splits of the global batch
  c.train.log_every = 25  # steps between metric lines
  c.train.checkpoint_every = 250  # steps between checkpoints (and one at the end)
  c.train.keep_checkpoints = 2  # checkpoints kept on disk
  c.train.async_checkpoint = True  # save in a background thread
  c.train.max_minutes = 0.0  # stop (with a checkpoint) after this wall time; 0 = no limit
  c.train.stop_after = 0  # stop (with a checkpoint) after this many steps of this run; 0 = never
  c.train.progress = True  # tqdm progress bar
  c.train.export_hf = False  # also write the final model to <workdir>/hf (transformers format)

  c.eval = config_dict.ConfigDict()
  c.eval.every = 250  # steps between held-out evaluations (and one at the end); 0 = end only
  c.eval.levels = ""  # levels to report; "" = the training levels
  c.eval.final_levels = ""  # extra levels reported only at the end ("all" = every level)
  c.eval.num_examples = 200  # held-out problems per level
  c.eval.batch_size = 200  # prompts decoded at once
  c.eval.max_new_tokens = 96  # generation budget per answer

  # RL recipe (jaxpost/recipes/rl.py): train.steps counts RL steps (sample -> update), and
  # eval.every / train.checkpoint_every count them too. loss.name picks the policy loss
  # (ppo | grpo | dr_grpo | dapo | gspo | gspo_token); its preset fills every "" / -1 here.
  c.rl = config_dict.ConfigDict()
  c.rl.init_from = ""  # SFT workdir to start from (its tokenizer + latest checkpoint); "" = none
  c.rl.prompts_per_step = 16  # P: prompts (groups) per RL step; tasks come from data.levels
  c.rl.samples_per_prompt = 8  # G: completions per prompt, so B = P * G rows per step
  c.rl.max_new_tokens = 64  # sampling budget per completion, in tokens
  c.rl.temperature = 1.0  # sampling temperature; the trainer scores log_softmax(logits / T)
  c.rl.top_k = 0  # sampling: keep the k most likely tokens; 0 = off
  c.rl.top_p = 1.0  # sampling: nucleus mass; 1 = off
  c.rl.min_p = 0.0  # sampling: keep p >= min_p * p_max; 0 = off
  c.rl.advantage = "grpo"  # outcome advantage: grpo (z-score) | dr_grpo (mean only) | rloo
  c.rl.step_reward = 0.0  # weight of per-step trace rewards (token-level advantages); 0 = off
  # "sampler": pi_old = the sampler's recorded log_softmax(logits / T), one forward fewer
  # per step (TRL's choice); the ratio then also carries the sampler/trainer numerics gap
  # and rl/logp_mismatch_* is not logged.
  c.rl.old_logp = "recompute"  # pi_old of the ratio: recompute (a forward pass) | sampler
  c.rl.shared_prompt = True  # score/update each group's prompt once, not G times (exact)
  c.rl.epochs = 1  # passes of policy updates over each rollout batch
  c.rl.minibatches = 1  # optimiser updates per pass, each on B / minibatches shuffled rows
  c.rl.dynamic_sampling = False  # DAPO: drop groups with identical rewards and refill
  c.rl.max_sample_rounds = 4  # dynamic sampling: generation rounds per step at most
  c.rl.mask_truncated = False  # overlong filtering: completions that hit the cap carry no loss
  c.rl.kl_coef = -1.0  # beta of KL to the frozen initial policy; -1 = preset (grpo 0.04, else 0)
  c.rl.kl_estimator = "k3"  # k1 | k2 | k3 per-token KL estimator
  c.rl.kl_in_reward = False  # subtract beta * sum_t KL_t from the reward instead of the loss
  c.rl.ratio = ""  # "" = preset | token | sequence | sequence_token | turn
  c.rl.clip_eps_low = -1.0  # clip range 1 - eps_low; -1 = preset
  c.rl.clip_eps_high = -1.0  # clip range 1 + eps_high (DAPO clip-higher 0.28); -1 = preset
  c.rl.dual_clip = False  # cap negative-advantage token losses at -A * clip_ratio_c
  c.rl.clip_ratio_c = 3.0  # c of the dual clip
  c.rl.agg = ""  # loss aggregation; "" = preset; one of jaxpost.losses.reduce.AGGREGATIONS
  c.rl.agg_constant = 0.0  # C of seq_mean_token_sum_norm; 0 = update rows * max_new_tokens
  c.rl.entropy_coef = 0.0  # entropy bonus coefficient
  c.rl.is_level = ""  # sampler/trainer IS weight pi_old / mu: "" off | token | sequence | geometric
  c.rl.is_mode = "truncate"  # truncate (TIS) | mask (zero weights outside [floor, cap])
  c.rl.is_cap = 2.0  # upper bound of the IS weight
  c.rl.is_floor = 0.0  # lower bound in mask mode; 0 = 1 / is_cap
  c.rl.prefix = ""  # MinPRO prefix factor: "" off | min_exclusive | min_inclusive
  c.rl.prefix_behavior = "old"  # MinPRO ratio denominator: old (pi_old) | sampler (mu)

  # Rewards of the RL recipe: a weighted sum of registered rewards (jaxpost/rewards).
  c.reward = config_dict.ConfigDict()
  c.reward.terms = (("exact_answer", 1.0),)  # (name, weight) pairs, summed
  c.reward.timeout_s = 1.0  # time limit of one reward call; a call past it scores 0
  c.reward.exact_answer = config_dict.ConfigDict()
  c.reward.exact_answer.correct = 1.0  # reward of a correct final answer
  c.reward.exact_answer.wrong = 0.0  # reward of a wrong, missing or malformed answer
  c.reward.exact_answer.truncated_is_wrong = True  # a completion that hit the cap is wrong
  c.reward.think_format = config_dict.ConfigDict()
  c.reward.think_format.ok = 1.0  # reward of a well-formed <think>...</think>answer
  c.reward.think_format.bad = 0.0  # reward otherwise
  c.reward.overlong = config_dict.ConfigDict()
  c.reward.overlong.max_len = 0  # DAPO L_max in tokens, where the penalty hits -1; 0 = the cap
  c.reward.overlong.cache_len = 16  # DAPO L_cache: tokens over which the penalty ramps to -1
  c.reward.overlong.penalty_factor = 1.0  # scale of the overlong penalty
  c.reward.length = config_dict.ConfigDict()
  c.reward.length.norm_tokens = 0  # tokens that cost 1 in the linear length penalty; 0 = the cap
  c.reward.length.free_tokens = 0  # tokens that cost nothing
  return c
