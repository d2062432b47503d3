"""Per-host batch packing: the global batch as independent packing streams.

Packing is sequential (where a row ends decides where the next one starts), so a
host cannot pack "its" rows of a globally packed batch without packing all the rows
before them. Instead the global batch of B rows is split into S streams of B / S
rows each: stream j reads source indices j, j + S, j + 2S, ... and always fills rows
[j * B / S, (j + 1) * B / S). A host packs only the streams that hold rows it feeds
to its devices, so

* the global batch depends on (source, B, T, S) only, never on the number of hosts
  or how the mesh lays rows out over them, and
* with S = 1 it is exactly ``packing.pack_batch`` over one sequential stream (the
  single-host behaviour, data position = ``next_index``).

Set S to a multiple of the process count so that no two hosts pack the same rows.
The data position is one count per stream (examples consumed), saved in checkpoints.
"""

from __future__ import annotations

import numpy as np

from jaxpost.data import packing


class StreamPacker:
  """Packs this host's rows of each global batch.

  Args:
    source: index -> (tokens, roles) of one templated example.
    batch_size: B, rows of the global batch.
    seq_len: T.
    streams: S, must divide B.
    rows: global row indices this host supplies (e.g. ``sharding.process_rows``), in
      the order of its local batch; None = all rows (single host).
    pack: several examples per row.
    overlong: policy for examples longer than T (see ``packing.pack_batch``).

  Attributes:
    streams: S.
    rows: global row indices this host supplies, in the order of its local batch.
    owned: sorted stream indices this host packs (every stream holding one of ``rows``).
    positions: i64[S] examples consumed per stream; only the owned entries advance
      on this host (``state()`` merges them across hosts).
  """

  @classmethod
  def for_config(cls, source: packing.ExampleSource, data, rows=None, **overrides):
    """The packer a config's ``data`` section describes (``overrides``: e.g. another
    ``seq_len`` or ``pack`` for a second view of the same examples)."""
    kw = dict(
      batch_size=data.batch_size,
      seq_len=data.seq_len,
      streams=data.streams,
      pack=data.pack,
      overlong=data.overlong,
    )
    return cls(source, rows=rows, **{**kw, **overrides})

  def __init__(
    self,
    source: packing.ExampleSource,
    *,
    batch_size: int,
    seq_len: int,
    streams: int = 1,
    rows=None,
    pack: bool = True,
    overlong: str = "error",
  ):
    if streams < 1 or batch_size % streams:
      raise ValueError(f"streams={streams} must be >= 1 and divide batch_size={batch_size}")
    self.source = source
    self.batch_size, self.seq_len, self.streams = batch_size, seq_len, streams
    self.rows_per_stream = batch_size // streams
    self.rows = np.arange(batch_size) if rows is None else np.asarray(rows, np.int64)
    if self.rows.ndim != 1 or len(self.rows) == 0 or self.rows.min() < 0:
      raise ValueError(f"rows must be a non-empty list of row indices, got {rows!r}")
    if self.rows.max() >= batch_size:
      raise ValueError(f"row {int(self.rows.max())} is outside the batch of {batch_size}")
    self.owned = np.unique(self.rows // self.rows_per_stream)
    self.pack, self.overlong = pack, overlong
    self.positions = np.zeros(streams, np.int64)
    # Where each local row sits in the concatenation of the owned streams' blocks.
    stream_of, offset = np.divmod(self.rows, self.rows_per_stream)
    self._take = np.searchsorted(self.owned, stream_of) * self.rows_per_stream + offset

  @property
  def capacity(self) -> int:
    """Token slots this host packs per batch (owned streams' rows * T)."""
    return len(self.owned) * self.rows_per_stream * self.seq_len

  @property
  def next_index(self) -> int:
    """Examples consumed over all streams (with one stream: the next source index).

    On a multi-host run this host only tracks its own streams; ``state()`` has the
    merged count.
    """
    return int(self.positions.sum())

  def _stream_source(self, j: int) -> packing.ExampleSource:
    if self.streams == 1:
      return self.source
    source, s = self.source, self.streams
    # Stream-local index k is source index j + S * k; errors name the source's place.
    example_id = getattr(source, "example_id", None)
    return packing.PlacedSource(
      lambda k: source(j + s * k),
      lambda k: packing.where(source, j + s * k),
      None if example_id is None else (lambda k: example_id(j + s * k)),
    )

  def next_batch(self) -> tuple[dict[str, np.ndarray], packing.PackStats]:
    """Packs the next batch.

    Returns:
      (``Batch`` field arrays [len(rows), T] of this host's rows, pack stats of the
      streams it packed).
    """
    blocks, stats = [], packing.PackStats()
    for j in self.owned:
      arrays, self.positions[j], s = packing.pack_batch(
        self._stream_source(int(j)),
        int(self.positions[j]),
        batch_size=self.rows_per_stream,
        seq_len=self.seq_len,
        pack=self.pack,
        overlong=self.overlong,
      )
      blocks.append(arrays)
      stats.examples += s.examples
      stats.truncated += s.truncated
      stats.rejected += s.rejected
      stats.tokens += s.tokens
    local = {k: np.concatenate([b[k] for b in blocks])[self._take] for k in blocks[0]}
    return local, stats

  def state(self) -> dict:
    """The data position as JSON: ``next_index`` (total) and ``stream_positions``.

    On a multi-host run every process must call this (it gathers each stream's
    position from a host that packs it).
    """
    import jax  # the data package is otherwise JAX-free

    positions = self.positions
    if jax.process_count() > 1:
      from jax.experimental import multihost_utils

      mine = np.full(self.streams, -1, np.int32)
      mine[self.owned] = self.positions[self.owned]
      positions = np.max(np.asarray(multihost_utils.process_allgather(mine)), axis=0)
    return {
      "next_index": int(np.sum(positions)),
      "stream_positions": [int(p) for p in positions],
    }

  def restore(self, data: dict) -> None:
    """Sets the position from ``state()`` output (or a pre-streams ``{"next_index": n}``)."""
    positions = data.get("stream_positions", [data["next_index"]])
    if len(positions) != self.streams:
      raise ValueError(
        f"the checkpoint has {len(positions)} data streams but data.streams={self.streams}; "
        "changing it changes the data order"
      )
    self.positions = np.asarray(positions, np.int64)
