"""Shared pytest setup: 8 fake CPU devices (for sharding tests) and small helpers."""

import os

# Must be set before jax initialises its backends; harmless for single-device tests.
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
