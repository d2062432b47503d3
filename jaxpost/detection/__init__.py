"""Hallucination detection on frozen models (issue 16): the FLaG head and the metrics."""

from jaxpost.detection import flag, metrics

__all__ = ["flag", "metrics"]
