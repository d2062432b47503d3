"""Clients as partitions of one pool of examples, by the usual federated schemes.

  iid        a seeded shuffle cut into near-equal parts: every client sees the pool's
             mixture
  level      non-IID by task level (label skew at its extreme): the levels are dealt
             round-robin to the clients, and a level shared by several clients is cut
             evenly among them; with more levels than clients a client holds several
  dirichlet  non-IID with a knob (Hsu et al. 2019): for each level, its examples are
             split among the clients in proportions drawn from Dirichlet(alpha, ...,
             alpha); small alpha -> each level concentrates on few clients, large
             alpha -> IID; the proportions are drawn again (up to 100 times) while a
             client would be left with no example

Every scheme returns each client's pool indices (sorted), together a partition of the
pool: disjoint and covering it. A client left with no example is an error (nothing to
train on, and a zero weight in the server's mean): more examples, fewer clients or a
larger alpha.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

SCHEMES = ("iid", "level", "dirichlet")
DIRICHLET_DRAWS = 100


def partition(
  levels: Sequence[str], clients: int, scheme: str, *, alpha: float = 0.5, seed: int = 0
) -> list[np.ndarray]:
  """Pool indices of each of ``clients`` clients; ``levels[i]`` is example i's level."""
  if clients < 1:
    raise ValueError(f"clients must be >= 1, got {clients}")
  n = len(levels)
  if n < clients:
    raise ValueError(f"{n} examples cannot fill {clients} clients")
  rng = np.random.default_rng([seed, 0xFED])
  names = sorted(set(levels))
  by_level = {lv: np.flatnonzero(np.asarray(levels) == lv) for lv in names}
  if scheme == "iid":
    parts = np.array_split(rng.permutation(n), clients)
  elif scheme == "level":
    owners = {lv: [k for k in range(clients) if k % len(names) == i] or [i % clients]
              for i, lv in enumerate(names)}  # fmt: skip
    parts = [[] for _ in range(clients)]
    for lv, idx in by_level.items():
      for k, cut in zip(owners[lv], np.array_split(rng.permutation(idx), len(owners[lv])),
                        strict=True):  # fmt: skip
        parts[k].extend(cut)
  elif scheme == "dirichlet":
    if alpha <= 0:
      raise ValueError(f"dirichlet alpha must be > 0, got {alpha}")
    for _ in range(DIRICHLET_DRAWS):  # redrawn while a client is left empty (common practice)
      parts = [[] for _ in range(clients)]
      for idx in by_level.values():
        p = rng.dirichlet(np.full(clients, alpha))
        cuts = (np.cumsum(p)[:-1] * len(idx)).round().astype(int)
        for k, cut in enumerate(np.split(rng.permutation(idx), cuts)):
          parts[k].extend(cut)
      if all(parts):
        break
  else:
    raise ValueError(f"partition scheme {scheme!r}; expected one of {SCHEMES}")
  out = [np.sort(np.asarray(p, np.int64)) for p in parts]
  empty = [k for k, p in enumerate(out) if not p.size]
  if empty:
    raise ValueError(
      f"clients {empty} got no example ({scheme} partition of {n} examples over "
      f"{clients} clients): use more examples, fewer clients or a larger alpha"
    )
  return out


def level_counts(levels: Sequence[str], parts: Sequence[np.ndarray]) -> list[dict[str, int]]:
  """Each client's examples per level (for the run's log)."""
  arr = np.asarray(levels)
  return [{lv: int(c) for lv, c in zip(*np.unique(arr[p], return_counts=True), strict=True)}
          for p in parts]  # fmt: skip
