"""Entry point of a reward worker process (see `combine.RewardPool`), and its wire format.

The parent starts ``python -P <this file> CMD_FD OUT_FD``: a fresh interpreter, run by
path (``-P``: without this directory on ``sys.path``, where ``token.py`` would shadow
the standard library's) so that neither ``jaxpost.rewards`` nor JAX is imported to
start it; only the standard library is. Samples and reward functions arrive pickled
(by reference: module and qualified name), so a worker imports just the modules of the
rewards it runs and of `registry.Sample`.

Protocol, one pickled tuple per message over two pipes
(``multiprocessing.connection.Connection`` framing):

* parent -> worker: ``("calls", sys_path, loads, calls)`` with the parent's
  ``sys.path`` (so modules resolve as in the parent, as with multiprocessing's spawn),
  ``loads`` ``{fn_id: pickled fn}`` (functions this worker has not seen yet) and
  ``calls`` the pickled list ``[(call_id, fn_id, sample), ...]``, run in order.
* worker -> parent: ``("ready", pid)`` once; per "calls" message ``("loaded", t,
  error)`` and then ``("done", call_id, value, error, t)`` as each call finishes,
  where ``t`` is ``time.monotonic()`` (one clock for all processes of the machine) at
  which the next call starts: the parent measures each call's own deadline from it.

A worker exits when its command pipe closes (the parent closed it or died).
"""

from __future__ import annotations

import math
import os
import pickle
import sys
import time
from multiprocessing.connection import Connection
from typing import Any


def as_reward(value: Any) -> float:
  """The value as a finite float; raises for anything else (bool and str included)."""
  if isinstance(value, bool | str | bytes) or value is None:
    raise TypeError(f"a reward must return a real number, got {type(value).__name__}")
  x = float(value)
  if not math.isfinite(x):
    raise ValueError(f"a reward must be finite, got {x}")
  return x


def call(fn: Any, sample: Any) -> tuple[float, str | None]:
  """``(value, None)`` on success, ``(0.0, why)`` on any failure of the reward."""
  try:
    return as_reward(fn(sample)), None
  except BaseException as e:  # even SystemExit: a reward must not end scoring
    return 0.0, f"error {e!r}"


def serve(commands: Connection, results: Connection) -> None:
  """Runs calls until the command pipe closes."""
  fns: dict[int, Any] = {}
  results.send(("ready", os.getpid()))
  while True:
    try:
      message = commands.recv()
    except EOFError:
      return
    _, sys.path[:], loads, calls = message
    try:  # unpickled here, not in recv, so that a reward that does not load is reported
      for fn_id, blob in loads.items():
        fns[fn_id] = pickle.loads(blob)
      calls = pickle.loads(calls)  # samples: imports registry.Sample's module
    except BaseException as e:
      results.send(("loaded", time.monotonic(), f"{type(e).__name__}: {e}"))
      continue
    results.send(("loaded", time.monotonic(), None))
    for call_id, fn_id, sample in calls:
      value, error = call(fns[fn_id], sample)
      results.send(("done", call_id, value, error, time.monotonic()))


if __name__ == "__main__":
  serve(Connection(int(sys.argv[1]), writable=False), Connection(int(sys.argv[2]), readable=False))
