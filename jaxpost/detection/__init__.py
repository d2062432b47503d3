"""Hallucination detection on frozen models (issue 16): metrics first."""

from jaxpost.detection import metrics

__all__ = ["metrics"]
