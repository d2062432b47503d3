"""Off-policy distillation on the quickstart task: KD variants vs SFT and SeqKD (issue 15).

Teacher: the zoo's ``teacher-mul2x2`` (the quickstart trained to the end, 1500 steps:
~96% held-out mul2x2). Students: the same 0.4M-parameter size from scratch, 500 steps of
configs/quickstart.py's batches (a third of the teacher's budget), all on the teacher's
tokenizer. Per seed (data order, init and the held-out problems):
  sft        cross-entropy on the tasks' reference traces (the undistilled student);
  seqkd      cross-entropy on the teacher's greedy responses to 32000 training prompts
             (SeqKD; the file comes from ``jaxpost.data.generated``, command below);
  kd_*       the ``kd`` loss against the teacher's distribution at every position of
             the reference traces: forward KL at tau 1 and 2 (with tau^2), reverse KL,
             JSD(0.5), Hinton's mixture (a = 0.5, tau = 2) and a top-8 teacher (of 64
             tokens, plus the tail bucket: what an offline shard stores);
  teacher    the teacher itself, evaluated (the ceiling).
The report's baseline is ``sft``.

  python -m jaxpost.data.generated --model=zoo:teacher-mul2x2 --levels=add3:0.2,mul2x2:1.0 \\
      --n=32000 --max_new_tokens=64 --batch_size=256 --out=runs/distill/teacher_quickstart.jsonl
  python -m jaxpost.sweep --config=configs/sweeps/distill.py --report
  python -m jaxpost.sweep.report runs/sweeps/distill --out experiments/distillation

Variant ``warm``: distillation of a partly trained student, as GKD, SODA and REDI apply
it (``_warm``): every cell fine-tunes the zoo's ``student-mul2x2-40@SEED`` (an SFT run
stopped at >= 40% held-out mul2x2) for 300 steps at lr 5e-4 against ``teacher-mul2x2@SEED``,
on-policy GKD, privileged self-distillation and the pair methods included (seed s: the
student and the teacher of the quickstart's seed s, which share its tokenizer). Cells:
start (the student, evaluated), sft, seqkd, kd_fkl, gkd (lambda 0.5, JSD), onpolicy_rkl
(lambda 1, full-vocabulary reverse KL), motab (configs/motab.py), self_answer / self_trace
(the student itself as teacher, seeing the answer / worked solution), self_answer_ema (its
EMA copy as that teacher), self_answer_ce (half cross-entropy on the reference), soda
(DPO: teacher response over the start's own, reference = the start), redi (correct over
incorrect teacher samples), soda_lr/10 and redi_lr/10 (both at lr 5e-5), t3s_online (SFT
whose anchor tokens leave the loss once an imitation bottleneck shows), teacher:
  for s in 0 1 2; do
    python -m jaxpost.data.generated --model=zoo:student-mul2x2-40@$s \\
        --levels=add3:0.2,mul2x2:1.0 --n=8000 --max_new_tokens=64 --batch_size=256 \\
        --out=runs/distill/student40_$s.jsonl
    python -m jaxpost.data.pairs --chosen=runs/distill/teacher_quickstart.jsonl \\
        --rejected=runs/distill/student40_$s.jsonl --require=differ --out=runs/distill/soda_$s.jsonl
  done
  python -m jaxpost.data.generated --model=zoo:teacher-mul2x2 --levels=add3:0.2,mul2x2:1.0 \\
      --n=16000 --samples=8 --temperature=1.0 --max_new_tokens=64 --batch_size=256 \\
      --out=runs/distill/teacher_t1x8.jsonl
  python -m jaxpost.data.pairs --chosen=runs/distill/teacher_t1x8.jsonl \\
      --rejected=runs/distill/teacher_t1x8.jsonl --out=runs/distill/redi.jsonl \\
      --require=chosen_correct,rejected_incorrect,differ --per_prompt=4
  python -m jaxpost.sweep --config=configs/sweeps/distill.py:warm --name=distill_warm --report

Variant ``step_by_step``: distilling step-by-step from scratch, the teacher's rationales as a
second task against its answers alone (``_step_by_step``):
  python -m jaxpost.sweep --config=configs/sweeps/distill.py:step_by_step --name=distill_sbs \\
      --report

Variant ``smollm2``: the same question with a real pretrained teacher (``_smollm2``):
  python -m jaxpost.sweep --config=configs/sweeps/distill.py:smollm2 --name=distill_smollm2 --report
"""

from jaxpost.sweep import Sweep, cells

TEACHER = "zoo:teacher-mul2x2"
SEQKD_DATA = "runs/distill/teacher_quickstart.jsonl"
FROM_SCRATCH = {  # the students from scratch: 500 quickstart steps on the teacher's ids
  "train.progress": False,
  "train.steps": 500,
  "train.max_minutes": 0.0,  # a step budget, never the wall clock
  "train.checkpoint_every": 500,
  "tokenizer.path": TEACHER,  # every student on the teacher's token ids
  "eval.every": 100,
  "eval.levels": "mul2x2",
  "eval.final_levels": "",
}
REPORT = {
  "metrics": ["eval/accuracy"],
  "baseline": "sft",
  "curves": ["eval/accuracy"],
  "scale": 100.0,
  "unit": "%",
}


def get_config(variant: str = "default") -> Sweep:
  if variant == "smollm2":
    return _smollm2()
  if variant == "warm":
    return _warm()
  if variant == "step_by_step":
    return _step_by_step()
  if variant != "default":
    raise ValueError(
      f"unknown variant {variant!r}; expected default | warm | step_by_step | smollm2"
    )
  kd = {"loss.name": "kd", "teacher.init_from": TEACHER}
  return Sweep(
    base="configs/quickstart.py",
    cells=cells(
      {"name": "sft"},
      {"name": "seqkd", "data.source": "jsonl", "data.path": SEQKD_DATA},
      {"name": "kd_fkl", **kd},
      {"name": "kd_fkl_t2", **kd, "loss.kd.temperature": 2.0},
      {"name": "kd_rkl", **kd, "loss.kd.divergence": "rkl"},
      {"name": "kd_jsd", **kd, "loss.kd.divergence": "jsd"},
      {"name": "kd_hinton", **kd, "loss.kd.temperature": 2.0, "loss.kd.hard_label_weight": 0.5},
      {"name": "kd_top8", **kd, "loss.kd.top_k": 8},
      {"name": "teacher", "train.steps": 0, "train.init_from": TEACHER},
    ),
    seeds=(0, 1, 2),
    fixed=FROM_SCRATCH,
    report=REPORT,
  )


def _warm() -> Sweep:
  """Fine-tuning ``student-mul2x2-40@SEED`` for 300 steps by each method (module doc).

  Each seed's student and teacher come from the same seed's quickstart run, so they share
  its tokenizer (a teacher must have the student's token ids)."""
  quick, gkd = "configs/quickstart.py", "configs/gkd.py:quickstart"
  teacher = "zoo:teacher-mul2x2@{seed}"
  kd = {"config": quick, "loss.name": "kd", "teacher.init_from": teacher}
  gkd_cell = {"config": gkd, "teacher.init_from": teacher}
  rows = {"data.pack": False, "data.seq_len": 80}  # one example per row, room for responses
  pairs = {"config": quick, "data.source": "pairs", "data.streams": 1, **rows}
  self_kd = {"config": quick, "loss.name": "kd", **rows}  # the student, privileged, teaches
  soda = {
    **pairs,
    "data.path": "runs/distill/soda_{seed}.jsonl",
    "loss.name": "dpo",
    "teacher.init_from": "zoo:student-mul2x2-40@{seed}",  # the reference: the start
  }
  redi = {**pairs, "data.path": "runs/distill/redi.jsonl", "loss.name": "redi"}
  return Sweep(
    base=quick,
    cells=cells(
      {"name": "start", "train.steps": 0},  # the undistilled student
      {"name": "sft"},
      {"name": "seqkd", "data.source": "jsonl", "data.path": SEQKD_DATA},
      {"name": "kd_fkl", **kd},
      {"name": "gkd", **gkd_cell},  # lambda 0.5, JSD(0.5): GKD's defaults
      {"name": "onpolicy_rkl", **gkd_cell, "gkd.lmbda": 1.0, "loss.kd.divergence": "rkl"},
      {"name": "motab", **gkd_cell, "config": "configs/motab.py:quickstart"},
      {"name": "self_answer", **self_kd, "teacher.privileged": "answer"},
      {"name": "self_trace", **self_kd, "teacher.privileged": "trace"},
      {
        "name": "self_answer_ema",
        **self_kd,
        "teacher.privileged": "answer",
        "teacher.follow": "ema",
      },
      {
        "name": "self_answer_ce",  # anchored by the reference tokens' cross-entropy
        **self_kd,
        "teacher.privileged": "answer",
        "loss.kd.hard_label_weight": 0.5,
      },
      {"name": "soda", **soda},
      {"name": "redi", **redi},
      {"name": "soda_lr/10", **soda, "optim.lr": 5e-5},  # preference losses at a tenth of the lr
      {"name": "redi_lr/10", **redi, "optim.lr": 5e-5},
      # T3S online: anchors leave the loss once held-out accuracy dips and recovers by
      # data.t3s_margin (checked every 20 steps here); a run that never dips is SFT.
      {"name": "t3s_online", "data.token_selection": "online", "eval.every": 20},
      {"name": "teacher", "train.steps": 0, "train.init_from": teacher},
    ),
    seeds=(0, 1, 2),
    fixed={
      "train.progress": False,
      "train.steps": 300,
      "train.max_minutes": 0.0,
      "train.checkpoint_every": 300,
      "train.init_from": "zoo:student-mul2x2-40@{seed}",
      "optim.lr": 5e-4,
      "optim.warmup_steps": 10,
      "eval.every": 100,
      "eval.levels": "mul2x2",
      "eval.final_levels": "",
    },
    report=REPORT,
  )


def _step_by_step() -> Sweep:
  """Distilling step-by-step from scratch (module doc's default setting): the teacher's
  rationales as a second task (``sbs``, alpha 0.5) against the same rows with the
  rationale task weighted 0 (``label_only``: the paper's standard distillation, the
  teacher's answers alone), SeqKD (rationale and answer as one output) and SFT."""
  sbs = {"config": "configs/step_by_step.py:quickstart", "data.path": SEQKD_DATA}
  return Sweep(
    base="configs/quickstart.py",
    cells=cells(
      {"name": "sft"},
      {"name": "seqkd", "data.source": "jsonl", "data.path": SEQKD_DATA},
      {"name": "sbs", **sbs},
      {"name": "label_only", **sbs, "loss.step_by_step.alpha": 1.0},
    ),
    seeds=(0, 1, 2),
    fixed=FROM_SCRATCH,
    report=REPORT,
  )


def _smollm2() -> Sweep:
  """A real pretrained teacher: configs/distill.py:smollm2. The student is
  SmolLM2-135M-Instruct cut to every third block (10 of 30, ``model.keep_layers``), the
  teacher the full model fine-tuned to 100% held-out add3 (the zoo's smollm2-add3-sft,
  one teacher for every seed); 200 steps of 8 x 160 tokens of add3 traces at lr 3e-4.
  Cells: start (the cut model, untrained), sft (cross-entropy on the traces), kd_fkl
  (forward KL to the teacher at every trace position), teacher."""
  distill = "configs/distill.py:smollm2"
  return Sweep(
    base=distill,
    cells=cells(
      {"name": "start", "loss.name": "cross_entropy", "train.steps": 0},
      {"name": "sft", "loss.name": "cross_entropy"},
      {"name": "kd_fkl"},
      {
        "name": "teacher",
        "config": "configs/sft.py:smollm2",
        "train.steps": 0,
        "train.init_from": "zoo:smollm2-add3-sft",
      },
    ),
    seeds=(0, 1, 2),
    fixed={
      "train.progress": False,
      "train.max_minutes": 0.0,
      "eval.levels": "add3",
      "eval.num_examples": 64,
      "eval.final_levels": "",
    },
    report={
      "metrics": ["eval/accuracy"],
      "baseline": "sft",
      "curves": ["eval/accuracy"],
      "scale": 100.0,
      "unit": "%",
    },
  )
