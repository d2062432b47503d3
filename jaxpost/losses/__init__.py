"""Loss functions, looked up by name (see ``registry``)."""

from jaxpost.losses.reduce import Normalizers, compute_normalizers
from jaxpost.losses.registry import get, names, register

__all__ = ["Normalizers", "compute_normalizers", "get", "names", "register"]
