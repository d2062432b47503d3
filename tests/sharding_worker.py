"""One process of the 2-process CPU check in test_sharding.py (run as a script).

Usage: JAX_PLATFORMS=cpu XLA_FLAGS=--xla_force_host_platform_device_count=4 \
  python sharding_worker.py COORDINATOR_PORT PROCESS_ID OUT_JSON

Joins a 2-process JAX runtime (4 CPU devices each, gloo collectives), packs this
process's rows of 3 global batches with StreamPacker, assembles them with
shard_batch on a 2x2x2 mesh, and writes per-row token sums of the *global* arrays
(computed on device, then gathered) plus the merged data position.
"""

import json
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import multihost_utils

from jaxpost import config_lib, sharding
from jaxpost.data.streams import StreamPacker
from jaxpost.types import Batch

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

B, T, STREAMS = 8, 24, 4


def source(i):
  """Same examples as tests/data/test_streams.py."""
  n = 4 + (i * 7919) % 8
  return (np.arange(n) + 100 * i).astype(np.int32), np.full(n, 3, np.int32)


def main(port: str, pid: str, out: str) -> None:
  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  config = _config()
  config.distributed.initialize = True
  config.distributed.coordinator_address = f"localhost:{port}"
  config.distributed.num_processes = 2
  config.distributed.process_id = int(pid)
  sharding.initialize_distributed(config)
  mesh = sharding.make_mesh(config)
  rows = sharding.process_rows(mesh, B)
  packer = StreamPacker(source, batch_size=B, seq_len=T, streams=STREAMS, rows=rows)
  row_sums = []
  for _ in range(3):
    arrays, _ = packer.next_batch()
    batch = sharding.shard_batch(Batch(**arrays), mesh, global_batch_size=B)
    sums = jax.jit(lambda t: jnp.sum(t, axis=1))(batch.tokens)  # [B], sharded
    row_sums.append(np.asarray(multihost_utils.process_allgather(sums, tiled=True)).tolist())
  result = {
    "process_count": jax.process_count(),
    "rows": rows.tolist(),
    "row_sums": row_sums,
    "state": packer.state(),
    "shape": list(batch.tokens.shape),
  }
  with open(out, "w") as f:
    json.dump(result, f)
  jax.distributed.shutdown()


def _config():
  c = config_lib.load_sibling(os.path.join(REPO, "configs", "base.py"), "base").get_config()
  c.mesh.data, c.mesh.fsdp, c.mesh.tensor = 2, 2, 2
  c.data.batch_size = B
  return c


if __name__ == "__main__":
  main(*sys.argv[1:])
