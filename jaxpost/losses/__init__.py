"""Loss functions, looked up by name and family (see ``registry``)."""

from jaxpost.losses.reduce import Normalizers, compute_normalizers
from jaxpost.losses.registry import (
  LOSSES,
  family,
  get,
  init_state,
  names,
  needs_reference,
  register,
)

__all__ = [
  "LOSSES",
  "Normalizers",
  "compute_normalizers",
  "family",
  "get",
  "init_state",
  "names",
  "needs_reference",
  "register",
]
