"""Federated fine-tuning simulated in one process: clients' local rounds vmapped over
stacked states (``jaxpost.federated.clients``), server aggregation
(``jaxpost.federated.aggregate``). Client partitions and FedSD / FedSDR's rounds are
issue 17's remaining work."""

from jaxpost.federated.aggregate import (
  AGGREGATORS,
  Server,
  client_weights,
  lora_product_mean,
  payload_bytes,
  refactor,
  server_optimizer,
  weighted_delta,
)
from jaxpost.federated.clients import broadcast, local_rounds, stack, unstack

__all__ = [
  "AGGREGATORS",
  "Server",
  "broadcast",
  "local_rounds",
  "stack",
  "unstack",
  "client_weights",
  "lora_product_mean",
  "payload_bytes",
  "refactor",
  "server_optimizer",
  "weighted_delta",
]
