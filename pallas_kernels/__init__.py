"""Pallas kernels (with XLA paths) for jaxpost: fused LM-head divergences, log-marginals."""
