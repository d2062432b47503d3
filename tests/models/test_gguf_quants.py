"""GGUF dequantizers: bit-exact against the ``gguf`` package's reference, plus round trips.

Every registered type is compared with ``gguf.quants.dequantize`` on random blocks
(random integer payloads, finite f16 scales) with ``np.array_equal``: both compute each
value with the same f32 operations in the same order, so no tolerance is needed. Where
``gguf.quants.quantize`` exists, quantize -> our dequantize must land within one
quantization step of the original data, which checks that the layout means what we
think and not only that two readers agree. Needs the optional ``gguf`` package.
"""

import numpy as np
import pytest

from jaxpost.models import gguf_quants

gguf = pytest.importorskip("gguf")

SHAPES = ((3, 256), (1, 512), (5, 768), (2, 3, 256))

# Byte offsets of the f16 fields (scales, mins) inside one block, from GGML's block structs.
F16_FIELDS = {
  "Q8_0": (0,),
  "Q4_0": (0,),
  "Q4_1": (0, 2),
  "Q5_0": (0,),
  "Q5_1": (0, 2),
  "Q2_K": (80, 82),
  "Q3_K": (108,),
  "Q4_K": (0, 2),
  "Q5_K": (0, 2),
  "Q6_K": (208,),
}
FLOAT_DTYPES = {"F32": np.float32, "F16": np.float16}


def _random_raw(rng: np.random.Generator, name: str, shape: tuple[int, ...]) -> np.ndarray:
  """Random tensor bytes shaped like ``GGUFReader``'s ``tensor.data`` for type ``name``."""
  if name in FLOAT_DTYPES:
    return rng.standard_normal(shape).astype(FLOAT_DTYPES[name])
  if name == "BF16":
    bits = rng.standard_normal(shape).astype(np.float32).view(np.uint32) >> 16
    return bits.astype("<u2").view(np.uint8)  # [..., 2 * ne0]
  qtype = gguf_quants.SUPPORTED[name]
  n_blocks = shape[-1] // qtype.block_size
  raw = rng.integers(0, 256, (*shape[:-1], n_blocks, qtype.type_size), dtype=np.uint8)
  for offset in F16_FIELDS[name]:
    # Finite scales of sane magnitude (random bytes could be inf or nan).
    scale = (rng.standard_normal((*shape[:-1], n_blocks)) * 0.1).astype("<f2")
    raw[..., offset : offset + 2] = scale[..., None].view(np.uint8)
  return raw.reshape(*shape[:-1], n_blocks * qtype.type_size)


def test_sizes_match_gguf():
  for name, qtype in gguf_quants.SUPPORTED.items():
    sizes = gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType[name]]
    assert (qtype.block_size, qtype.type_size) == sizes, name


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("name", sorted(gguf_quants.SUPPORTED))
def test_matches_reference(name, shape):
  rng = np.random.default_rng([*name.encode(), *shape])  # fixed per case
  raw = _random_raw(rng, name, shape)
  expected = gguf.quants.dequantize(raw, gguf.GGMLQuantizationType[name]).reshape(shape)
  got = gguf_quants.dequantize(raw, name, shape)
  assert got.dtype == np.float32 and got.shape == shape
  assert np.isfinite(expected).all()
  np.testing.assert_array_equal(got, expected)


def _step_bound(name: str, blocks: np.ndarray) -> np.ndarray:
  """Largest allowed |error| per block of f32[N, 32]: one quantization step.

  Symmetric types (d = absmax / 2^(bits-1)) can be off by a whole step where the value
  farthest from zero clips; asymmetric ones (d = range / (2^bits - 1)) by half a step,
  and one full step leaves room for the f16 rounding of d and m.
  """
  absmax = np.abs(blocks).max(axis=-1, keepdims=True)
  span = np.ptp(blocks, axis=-1, keepdims=True)
  return {
    "Q8_0": absmax / 127,
    "Q4_0": absmax / 8,
    "Q5_0": absmax / 16,
    "Q4_1": span / 15,
    "Q5_1": span / 31,
  }[name]


@pytest.mark.parametrize("name", ["Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1"])
def test_round_trip_legacy(name):
  x = np.random.default_rng(1).standard_normal((4, 512)).astype(np.float32)
  raw = gguf.quants.quantize(x, gguf.GGMLQuantizationType[name])
  y = gguf_quants.dequantize(raw, name, x.shape)
  err = np.abs(y - x).reshape(-1, 32)
  bound = _step_bound(name, x.reshape(-1, 32))
  assert (err <= bound * 1.001).all()
  assert err.max() > 0  # genuinely lossy, so the bound was exercised


def test_round_trip_bf16():
  x = np.random.default_rng(2).standard_normal((4, 256)).astype(np.float32)
  raw = gguf.quants.quantize(x, gguf.GGMLQuantizationType.BF16)
  y = gguf_quants.dequantize(raw, "BF16", x.shape)
  np.testing.assert_allclose(y, x, rtol=2**-8, atol=0)  # 8 significand bits, rounded


def test_reader_tensors(tmp_path):
  """What ``GGUFReader`` hands over (memmaps, byte rows, reversed ne) dequantizes as written."""
  rng = np.random.default_rng(3)
  x = rng.standard_normal((4, 256)).astype(np.float32)
  k_raw = _random_raw(rng, "Q4_K", (2, 3, 256))
  path = tmp_path / "t.gguf"
  writer = gguf.GGUFWriter(str(path), "llama")
  writer.add_tensor("f32", x)
  writer.add_tensor("f16", x.astype(np.float16))
  for name in ("BF16", "Q8_0"):
    qtype = gguf.GGMLQuantizationType[name]
    q = gguf.quants.quantize(x, qtype)
    writer.add_tensor(name, q, raw_shape=q.shape, raw_dtype=qtype)
  writer.add_tensor("q4_k", k_raw, raw_shape=k_raw.shape, raw_dtype=gguf.GGMLQuantizationType.Q4_K)
  writer.write_header_to_file()
  writer.write_kv_data_to_file()
  writer.write_tensors_to_file()
  writer.close()

  tensors = {t.name: t for t in gguf.GGUFReader(str(path)).tensors}
  assert tensors["f16"].data.dtype == np.float16 and tensors["f16"].data.shape == (4, 256)
  assert tensors["BF16"].data.dtype == np.uint8 and tensors["BF16"].data.shape == (4, 512)
  for t in tensors.values():
    shape = tuple(int(n) for n in reversed(t.shape.tolist()))
    got = gguf_quants.dequantize(np.asarray(t.data), t.tensor_type.name, shape)
    np.testing.assert_array_equal(got, gguf.quants.dequantize(t.data, t.tensor_type))
    if t.name == "f32":
      np.testing.assert_array_equal(got, x)
  assert gguf_quants.dequantize(tensors["q4_k"].data, "Q4_K", (2, 3, 256)).shape == (2, 3, 256)


def test_big_endian_floats_are_read_by_value():
  x = np.random.default_rng(4).standard_normal((2, 8)).astype(np.float32)
  np.testing.assert_array_equal(gguf_quants.dequantize(x.astype(">f4"), "F32", x.shape), x)


def test_wrong_byte_count():
  raw = np.zeros((3, 2 * 144 - 1), dtype=np.uint8)
  with pytest.raises(ValueError, match=r"Q4_K: got 861 bytes for shape \(3, 512\), expected 864"):
    gguf_quants.dequantize(raw, "Q4_K", (3, 512))


def test_row_not_multiple_of_block():
  raw = np.zeros((2, 3 * 20), dtype=np.uint8)
  with pytest.raises(
    ValueError, match="Q4_1: row length 100 .* not a multiple of the block size 32"
  ):
    gguf_quants.dequantize(raw, "Q4_1", (2, 100))
  with pytest.raises(ValueError, match="Q6_K: row length 128 .* block size 256"):
    gguf_quants.dequantize(np.zeros((1, 210), np.uint8), "Q6_K", (1, 128))


def test_unsupported_type():
  with pytest.raises(
    ValueError, match=r"unsupported GGML tensor type 'IQ2_XXS'; supported: .*Q4_K"
  ):
    gguf_quants.dequantize(np.zeros(66, np.uint8), "IQ2_XXS", (256,))
