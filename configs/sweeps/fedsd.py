"""Federated LoRA on non-IID clients: FedAvg vs FedSD vs FedSDR (issue 17).

Per seed s, configs/fedsd.py (the zoo's ``student-mul2x2-40@s`` as the global start,
~50% held-out add3 and ~40% mul2x2; 2000 add3 / mul2x2 problems over 4 clients,
non-IID by Dirichlet(0.3) over the two levels; LoRA r = 8 on every projection; 20
rounds of 10 local AdamW steps, batch 16), the global model's held-out accuracy on 200
add3 and 200 mul2x2 problems:
  fedavg_iid     FedAvg, IID clients (what the non-IID split costs)
  fedavg         FedAvg (the baseline)
  fedprox        FedProx, mu = 0.01 (the clients' pull toward the round's global adapter)
  fedavg_exact   FedAvg with the exact mean of the clients' B A refactored to rank 8
  fedsd          FedSD: every client trains on the global start's rewrites of its data
                 (the start's own answers: the tiny models cannot read a reference answer
                 placed in their prompt, see fedsd_answer)
  fedsd_answer   FedSD with the card's conditioning: the reference answer in the prompt
  fedsdr         FedSDR: smoothing adapter on the rewrites, rectification adapter on the
                 raw data, only the latter aggregated; also each client's own model
                 (base + global + its smoothing adapter: eval_clients/accuracy)

  python -m jaxpost.sweep --config=configs/sweeps/fedsd.py --workers=1 --report
  python -m jaxpost.sweep.report runs/sweeps/fedsd --out experiments/federated
"""

from jaxpost.sweep import Sweep, cells

SD = {"fed.rewrite_context": "none"}


def get_config(variant: str = "default") -> Sweep:
  if variant != "default":
    raise ValueError(f"unknown variant {variant!r}; expected default")
  return Sweep(
    base="configs/fedsd.py",
    cells=cells(
      {"name": "fedavg_iid", "fed.method": "fedavg", "fed.partition": "iid"},
      {"name": "fedavg", "fed.method": "fedavg"},
      {
        "name": "fedprox",
        "fed.method": "fedavg",
        "fed.aggregator": "fedprox",
        "optim.l2_to_start": 0.01,
      },  # fmt: skip
      {"name": "fedavg_exact", "fed.method": "fedavg", "fed.lora_aggregation": "product"},
      {"name": "fedsd", "fed.method": "fedsd", **SD},
      {"name": "fedsd_answer", "fed.method": "fedsd", "fed.rewrite_context": "answer"},
      {"name": "fedsdr", "fed.method": "fedsdr", "fed.eval_clients": True, **SD},
    ),
    seeds=(0, 1, 2),
    fixed={"train.steps": 20, "eval.every": 10, "train.progress": False},
    report={
      "metrics": [
        "eval/accuracy",
        "eval/accuracy/add3",
        "eval/accuracy/mul2x2",
        "eval_clients/accuracy",
        "rewrite/correct",
      ],  # fmt: skip
      "baseline": "fedavg",
      "curves": ["eval/accuracy"],
      "scale": 100.0,
      "unit": "%",
    },
  )
