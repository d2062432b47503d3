"""Federated fine-tuning simulated in one process: client partitions
(``jaxpost.federated.partition``), clients' local rounds vmapped over stacked states
(``jaxpost.federated.clients``), server aggregation and exact LoRA aggregation
(``jaxpost.federated.aggregate``), FedSD's one-time rewrite
(``jaxpost.federated.rewrite``). The round loop, FedSD and FedSDR are
``jaxpost/recipes/federated.py`` (``recipe=federated``). The submodules ``partition`` and
``rewrite`` are imported as modules (``from jaxpost.federated import partition``)."""

from jaxpost.federated.aggregate import (
  AGGREGATORS,
  Server,
  client_weights,
  lora_exact_mean,
  lora_product_mean,
  payload_bytes,
  refactor,
  server_optimizer,
  server_update,
  weighted_delta,
)
from jaxpost.federated.clients import broadcast, local_rounds, make_local_rounds, stack, unstack

__all__ = [
  "AGGREGATORS",
  "Server",
  "broadcast",
  "client_weights",
  "local_rounds",
  "lora_exact_mean",
  "lora_product_mean",
  "make_local_rounds",
  "payload_bytes",
  "refactor",
  "server_optimizer",
  "server_update",
  "stack",
  "unstack",
  "weighted_delta",
]
