"""Hallucination detection on frozen models (issue 16).

features    one forward pass per answer batch: hidden-state, drift, token-signal and
            instability families, stored as safetensors shards
flag        the FLaG head (latent evidence groups, log-marginal aggregation), its
            losses and training
baselines   the uncertainty scores and probes it is compared with
metrics     AUROC, AUPRC, PRR, ECE, Brier, best-threshold accuracy, bootstrap intervals
"""

from jaxpost.detection import baselines, features, flag, metrics

__all__ = ["baselines", "features", "flag", "metrics"]
