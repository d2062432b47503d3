"""Federated fine-tuning simulated in one process: server aggregation
(``jaxpost.federated.aggregate``); clients, local rounds and FedSD / FedSDR are issue 17's
remaining work."""

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

__all__ = [
  "AGGREGATORS",
  "Server",
  "client_weights",
  "lora_product_mean",
  "payload_bytes",
  "refactor",
  "server_optimizer",
  "weighted_delta",
]
