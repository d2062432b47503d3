"""NumPy dequantizers for GGUF/GGML tensor types (F32, F16, BF16, Q4_0 ... Q8_0, K-quants).

GGML stores a tensor row by row; each row (GGUF's ne0, NumPy's last axis) is a run of
fixed-size blocks, and each block holds ``block_size`` elements in ``type_size`` bytes.
The layouts below follow GGML's block structs (``ggml-common.h``); all fields are
little-endian. Every kernel maps u8[N, type_size] blocks to f32[N, block_size] at once,
vectorised over N, so a whole tensor is a handful of array operations.

Results equal the ``gguf`` package's reference dequantizers bit for bit (tested), and
follow the operation order of GGML's C code: f16 scales are widened to f32 (exact),
integers are cast to f32 (exact), and every product and sum is one f32 operation in the
reference's order, e.g. ``(d * sc) * q - dmin * m`` for Q4_K.

This module needs only NumPy; the ``gguf`` package (optional dependency) reads the file
and hands us each tensor's raw ``data``.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable

import numpy as np

# Shifts that select the four 2-bit fields of a byte, lowest first.
_SHIFTS_2BIT = np.array([0, 2, 4, 6], dtype=np.uint8)


@dataclasses.dataclass(frozen=True)
class QuantType:
  """One GGML tensor type.

  Attributes:
    block_size: elements per block.
    type_size: bytes per block.
    dequantize_blocks: u8[N, type_size] -> f32[N, block_size].
  """

  block_size: int
  type_size: int
  dequantize_blocks: Callable[[np.ndarray], np.ndarray]


def _f16(blocks: np.ndarray, offset: int) -> np.ndarray:
  """f32[N, 1]: the little-endian f16 at byte ``offset`` of each block, widened exactly."""
  return np.ascontiguousarray(blocks[:, offset : offset + 2]).view("<f2").astype(np.float32)


def _nibbles(qs: np.ndarray) -> np.ndarray:
  """u8[N, 2*B] from u8[N, B]: all low nibbles first, then all high nibbles.

  This is the element order of Q4_0/Q4_1/Q5_0/Q5_1: byte j holds elements j and j + B.
  """
  return np.concatenate([qs & 0x0F, qs >> 4], axis=-1)


def _bits(packed: np.ndarray) -> np.ndarray:
  """u8[N, 8*B] from u8[N, B]: bit i of the little-endian bit string, i.e. byte i//8, bit i%8."""
  return np.unpackbits(packed, axis=-1, bitorder="little")


# ---------------------------------------------------------------------------------------
# Unquantized types (block of one element).


def _dequantize_f32(blocks: np.ndarray) -> np.ndarray:
  return np.ascontiguousarray(blocks).view("<f4").astype(np.float32)


def _dequantize_f16(blocks: np.ndarray) -> np.ndarray:
  return np.ascontiguousarray(blocks).view("<f2").astype(np.float32)


def _dequantize_bf16(blocks: np.ndarray) -> np.ndarray:
  # bf16 is the top half of an f32: shift the 16 bits up and reinterpret (exact).
  bits = np.ascontiguousarray(blocks).view("<u2").astype(np.uint32) << 16
  return bits.view(np.float32)


# ---------------------------------------------------------------------------------------
# Legacy 32-element blocks.


def _dequantize_q8_0(blocks: np.ndarray) -> np.ndarray:
  """Q8_0, 34 bytes: f16 d, int8 qs[32]; x = d * q."""
  d = _f16(blocks, 0)
  q = blocks[:, 2:].view(np.int8).astype(np.float32)
  return d * q


def _dequantize_q4_0(blocks: np.ndarray) -> np.ndarray:
  """Q4_0, 18 bytes: f16 d, qs[16] nibbles; x = (q - 8) * d."""
  d = _f16(blocks, 0)
  q = _nibbles(blocks[:, 2:]).view(np.int8) - np.int8(8)
  return q.astype(np.float32) * d


def _dequantize_q4_1(blocks: np.ndarray) -> np.ndarray:
  """Q4_1, 20 bytes: f16 d, f16 m, qs[16] nibbles; x = q * d + m."""
  d, m = _f16(blocks, 0), _f16(blocks, 2)
  q = _nibbles(blocks[:, 4:]).astype(np.float32)
  return q * d + m


def _five_bit(qh: np.ndarray, qs: np.ndarray) -> np.ndarray:
  """u8[N, 32] 5-bit values from qh (u8[N, 4], a little-endian u32: bit j is element j's
  fifth bit) and qs (u8[N, 16] nibbles)."""
  return _nibbles(qs) | (_bits(qh) << 4)


def _dequantize_q5_0(blocks: np.ndarray) -> np.ndarray:
  """Q5_0, 22 bytes: f16 d, u32 qh, qs[16] nibbles; x = (q - 16) * d."""
  d = _f16(blocks, 0)
  q = _five_bit(blocks[:, 2:6], blocks[:, 6:]).view(np.int8) - np.int8(16)
  return q.astype(np.float32) * d


def _dequantize_q5_1(blocks: np.ndarray) -> np.ndarray:
  """Q5_1, 24 bytes: f16 d, f16 m, u32 qh, qs[16] nibbles; x = q * d + m."""
  d, m = _f16(blocks, 0), _f16(blocks, 2)
  q = _five_bit(blocks[:, 4:8], blocks[:, 8:]).astype(np.float32)
  return q * d + m


# ---------------------------------------------------------------------------------------
# K-quants: 256-element super-blocks of 16 or 8 sub-blocks, each with its own scale.


def _dequantize_q2_k(blocks: np.ndarray) -> np.ndarray:
  """Q2_K, 84 bytes: scales[16], qs[64], f16 d, f16 dmin.

  16 sub-blocks of 16; scales[s] holds the sub-block's 4-bit scale (low nibble) and
  4-bit min (high nibble); x = (d * sc) * q - dmin * m. Element 128h + 32j + 16k + l
  (h < 2, j < 4, k < 2, l < 16) is bits 2j..2j+1 of qs[32h + 16k + l], sub-block
  8h + 2j + k.
  """
  n = len(blocks)
  sc, qs = blocks[:, :16], blocks[:, 16:80]
  d, dmin = _f16(blocks, 80), _f16(blocks, 82)
  dl = (d * (sc & 0x0F).astype(np.float32))[:, :, None]  # [N, 16, 1]
  ml = (dmin * (sc >> 4).astype(np.float32))[:, :, None]
  # [N, h, j, 32]; the last axis (k, l) splits into two sub-blocks of 16.
  q = (qs.reshape(n, 2, 1, 32) >> _SHIFTS_2BIT[:, None]) & 0x03
  q = q.reshape(n, 16, 16).astype(np.float32)
  return (dl * q - ml).reshape(n, 256)


def _q3_k_scales(packed: np.ndarray) -> np.ndarray:
  """i8[N, 16] signed 6-bit scales from Q3_K's 12 packed bytes.

  Scale i takes its low 4 bits from nibble i//8 of byte i%8 and its high 2 bits from
  bits 2(i//4)..2(i//4)+1 of byte 8 + i%4, and is stored offset by 32.
  """
  n = len(packed)
  low = _nibbles(packed[:, :8])  # [N, 16]
  high = (packed[:, None, 8:] >> _SHIFTS_2BIT[:, None]) & 0x03  # [N, i//4, i%4]
  return (low | (high.reshape(n, 16) << 4)).view(np.int8) - np.int8(32)


def _dequantize_q3_k(blocks: np.ndarray) -> np.ndarray:
  """Q3_K, 110 bytes: hmask[32], qs[64], scales[12], f16 d.

  16 sub-blocks of 16, x = (d * sc) * (q - 4 * (1 - hbit)). Element 128h + 32j + 16k + l
  takes its low 2 bits like Q2_K (qs[32h + 16k + l], bits 2j..2j+1), its high bit from
  bit 4h + j of hmask[16k + l] (set = no offset), and sub-block 8h + 2j + k.
  """
  n = len(blocks)
  hmask, qs = blocks[:, :32], blocks[:, 32:96]
  d = _f16(blocks, 108)
  dl = (d * _q3_k_scales(blocks[:, 96:108]).astype(np.float32))[:, :, None]  # [N, 16, 1]
  low = (qs.reshape(n, 2, 1, 32) >> _SHIFTS_2BIT[:, None]) & 0x03  # [N, h, j, 32]
  # [N, 32 bytes, 8 bits] -> [N, bit 4h + j, byte], the same (h, j, 32) order as low.
  hbit = _bits(hmask).reshape(n, 32, 8).transpose(0, 2, 1).reshape(n, 2, 4, 32)
  q = low.view(np.int8) - ((1 - hbit) << 2).view(np.int8)
  return (dl * q.reshape(n, 16, 16).astype(np.float32)).reshape(n, 256)


def _k4_scales_mins(packed: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """u8[N, 8] scales and u8[N, 8] mins (6-bit) from Q4_K/Q5_K's 12 packed bytes.

  GGML's get_scale_min_k4: sub-blocks 0..3 keep their scale and min in the low 6 bits of
  bytes 0..3 and 4..7; sub-blocks 4..7 take their low 4 bits from the nibbles of bytes
  8..11 and their high 2 bits from the top bits of bytes 0..3 (scale) and 4..7 (min).
  """
  a, b, c = packed[:, 0:4], packed[:, 4:8], packed[:, 8:12]
  scales = np.concatenate([a & 0x3F, (c & 0x0F) | ((a >> 6) << 4)], axis=-1)
  mins = np.concatenate([b & 0x3F, (c >> 4) | ((b >> 6) << 4)], axis=-1)
  return scales, mins


def _k4_apply(blocks: np.ndarray, q: np.ndarray) -> np.ndarray:
  """f32[N, 256] = (d * sc) * q - dmin * m for Q4_K/Q5_K; q: u8[N, 8, 32] per sub-block."""
  d, dmin = _f16(blocks, 0), _f16(blocks, 2)
  sc, m = _k4_scales_mins(blocks[:, 4:16])
  dl = (d * sc.astype(np.float32))[:, :, None]  # [N, 8, 1]
  ml = (dmin * m.astype(np.float32))[:, :, None]
  return (dl * q.astype(np.float32) - ml).reshape(len(blocks), 256)


def _k4_nibbles(qs: np.ndarray) -> np.ndarray:
  """u8[N, 8, 32] from qs u8[N, 128]: element 64c + 32k + l is nibble k of qs[32c + l]."""
  n = len(qs)
  q = (qs.reshape(n, 4, 1, 32) >> np.array([0, 4], dtype=np.uint8)[:, None]) & 0x0F
  return q.reshape(n, 8, 32)


def _dequantize_q4_k(blocks: np.ndarray) -> np.ndarray:
  """Q4_K, 144 bytes: f16 d, f16 dmin, scales[12], qs[128]; 8 sub-blocks of 32."""
  return _k4_apply(blocks, _k4_nibbles(blocks[:, 16:]))


def _dequantize_q5_k(blocks: np.ndarray) -> np.ndarray:
  """Q5_K, 176 bytes: f16 d, f16 dmin, scales[12], qh[32], qs[128].

  As Q4_K, plus a fifth bit: element 32s + l (sub-block s) has it at bit s of qh[l].
  """
  n = len(blocks)
  # [N, 32 bytes, 8 bits] -> [N, bit s, byte l].
  high = _bits(blocks[:, 16:48]).reshape(n, 32, 8).transpose(0, 2, 1)
  return _k4_apply(blocks, _k4_nibbles(blocks[:, 48:]) | (high << 4))


def _dequantize_q6_k(blocks: np.ndarray) -> np.ndarray:
  """Q6_K, 210 bytes: ql[128], qh[64], int8 scales[16], f16 d.

  16 sub-blocks of 16, x = (d * sc) * (q - 32). Element 128h + 32g + l (h < 2, g < 4,
  l < 32) takes its low 4 bits from nibble g//2 of ql[64h + 32(g%2) + l], its high 2
  bits from bits 2g..2g+1 of qh[32h + l], and sub-block 8h + 2g + l//16.
  """
  n = len(blocks)
  ql, qh = blocks[:, :128].reshape(n, 2, 2, 32), blocks[:, 128:192].reshape(n, 2, 1, 32)
  d = _f16(blocks, 208)
  sc = blocks[:, 192:208].view(np.int8).astype(np.float32)
  dl = (d * sc)[:, :, None]  # [N, 16, 1]
  # [N, h, nibble, g%2, 32] -> [N, h, g, 32] with g = 2 * nibble + g%2.
  low = np.stack([ql & 0x0F, ql >> 4], axis=2).reshape(n, 2, 4, 32)
  high = (qh >> _SHIFTS_2BIT[:, None]) & 0x03  # [N, h, g, 32]
  q = (low | (high << 4)).view(np.int8) - np.int8(32)
  return (dl * q.reshape(n, 16, 16).astype(np.float32)).reshape(n, 256)


# GGML type name -> layout. Sizes match gguf.GGML_QUANT_SIZES (checked by the tests).
SUPPORTED: dict[str, QuantType] = {
  "F32": QuantType(1, 4, _dequantize_f32),
  "F16": QuantType(1, 2, _dequantize_f16),
  "BF16": QuantType(1, 2, _dequantize_bf16),
  "Q8_0": QuantType(32, 34, _dequantize_q8_0),
  "Q4_0": QuantType(32, 18, _dequantize_q4_0),
  "Q4_1": QuantType(32, 20, _dequantize_q4_1),
  "Q5_0": QuantType(32, 22, _dequantize_q5_0),
  "Q5_1": QuantType(32, 24, _dequantize_q5_1),
  "Q2_K": QuantType(256, 84, _dequantize_q2_k),
  "Q3_K": QuantType(256, 110, _dequantize_q3_k),
  "Q4_K": QuantType(256, 144, _dequantize_q4_k),
  "Q5_K": QuantType(256, 176, _dequantize_q5_k),
  "Q6_K": QuantType(256, 210, _dequantize_q6_k),
}


def dequantize(raw: np.ndarray, type_name: str, shape: tuple[int, ...]) -> np.ndarray:
  """Dequantizes one GGUF tensor to float32.

  Args:
    raw: the tensor's bytes as ``gguf.GGUFReader`` gives them in ``tensor.data``: u8[...,
      bytes per row] for quantized types and BF16, f32/f16[shape] for F32/F16. Any dtype
      and shape with the right number of bytes is accepted; typed arrays are read by value
      (a big-endian view is converted), u8 arrays as little-endian GGML bytes.
    type_name: the GGML type name, e.g. ``"Q4_K"`` (``tensor.tensor_type.name``).
    shape: the NumPy shape (ne_{n-1}, ..., ne0); the last axis is a row of blocks.

  Returns:
    f32[shape].

  Raises:
    ValueError: unsupported type, a row length that is not a multiple of the block size,
      or a byte count that does not match ``shape``.
  """
  qtype = SUPPORTED.get(type_name)
  if qtype is None:
    raise ValueError(
      f"unsupported GGML tensor type {type_name!r}; supported: {', '.join(SUPPORTED)}"
    )
  shape = tuple(int(n) for n in shape)
  if not shape:
    raise ValueError(f"{type_name}: shape must have at least one axis, got {shape}")
  if shape[-1] % qtype.block_size:
    raise ValueError(
      f"{type_name}: row length {shape[-1]} (shape {shape}) is not a multiple of "
      f"the block size {qtype.block_size}"
    )
  n_blocks = math.prod(shape) // qtype.block_size
  expected = n_blocks * qtype.type_size
  # Bring typed values into GGML's little-endian byte order (a no-op on x86 and ARM).
  raw = np.ascontiguousarray(raw, dtype=raw.dtype.newbyteorder("<"))
  if raw.nbytes != expected:
    raise ValueError(
      f"{type_name}: got {raw.nbytes} bytes for shape {shape}, expected {expected} "
      f"({n_blocks} blocks of {qtype.type_size} bytes)"
    )
  blocks = raw.reshape(-1).view(np.uint8).reshape(n_blocks, qtype.type_size)
  return qtype.dequantize_blocks(blocks).reshape(shape)
