"""Shared pytest setup: 8 fake CPU devices (for sharding tests) and small helpers."""

import os

# Must be set before jax initialises its backends; harmless for single-device tests.
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402 (after the environment above)
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
from flax import nnx  # noqa: E402
from jax.experimental.compilation_cache import compilation_cache  # noqa: E402

_CACHE_OPTIONS = {
  "jax_compilation_cache_dir": None,  # set by the fixture
  "jax_persistent_cache_min_compile_time_secs": 0.0,
  "jax_persistent_cache_min_entry_size_bytes": 0,
}


@pytest.fixture(scope="session", autouse=True)
def zoo_dir(tmp_path_factory):
  """One model-zoo cache for the whole session (never the user's ~/.cache): an entry a
  test builds is reused by the next, in this process and in subprocesses. Under
  pytest-xdist (``-n 2``) the workers share it: the zoo locks each entry while one
  process builds it, and the other then reuses it."""
  path = _session_dir(tmp_path_factory, "zoo")
  saved = os.environ.get("JAXPOST_ZOO_DIR")
  os.environ["JAXPOST_ZOO_DIR"] = path
  yield path
  if saved is None:
    os.environ.pop("JAXPOST_ZOO_DIR", None)
  else:
    os.environ["JAXPOST_ZOO_DIR"] = saved


def _session_dir(tmp_path_factory, name: str) -> str:
  """A directory for the whole session, shared by the pytest-xdist workers."""
  if os.environ.get("PYTEST_XDIST_WORKER"):
    path = str(tmp_path_factory.getbasetemp().parent / name)
    os.makedirs(path, exist_ok=True)
    return path
  return str(tmp_path_factory.mktemp(name))


@pytest.fixture(scope="session")
def jax_cache_dir(tmp_path_factory):
  return _session_dir(tmp_path_factory, "jax")


@pytest.fixture(scope="module")
def subprocess_env(jax_cache_dir):
  """A persistent compilation cache shared by the session's runs (CLI subprocesses too).

  Recipe tests compile the same few programs again and again (every run builds fresh
  jitted closures); on 2 shared CPU cores that is most of their time. One cache for the
  whole session (both xdist workers), so modules that run the same configs share their
  programs. Yields the environment for subprocesses, which then use the same cache.
  Modules opt in with ``pytestmark = pytest.mark.usefixtures("subprocess_env")``.
  """
  options = {**_CACHE_OPTIONS, "jax_compilation_cache_dir": jax_cache_dir}
  saved = {name: getattr(jax.config, name) for name in options}
  for name, value in options.items():
    jax.config.update(name, value)
  compilation_cache.reset_cache()  # the cache is set up once per process: redo it
  env = {**os.environ, "JAX_PLATFORMS": "cpu"}
  env.update({name.upper(): str(value) for name, value in options.items()})
  yield env
  for name, value in saved.items():
    jax.config.update(name, value)
  compilation_cache.reset_cache()


def _random_decoder(config, seed: int = 0):
  """A decoder with random O(1)-logit weights, built in NumPy (eager JAX init is slow)."""
  from jaxpost.models.decoder import Decoder

  graphdef, state = nnx.split(nnx.eval_shape(lambda: Decoder(config, rngs=nnx.Rngs(0))))
  rng = np.random.default_rng(seed)

  def fill(path, leaf):
    noise = rng.standard_normal(leaf.shape).astype(np.float32)
    name = jax.tree_util.keystr(path)
    scale = 1.0 if "embed" in name else 0.3
    return jnp.asarray(1.0 + 0.2 * noise if "norm" in name else scale * noise)

  return nnx.merge(graphdef, jax.tree_util.tree_map_with_path(fill, state))


@pytest.fixture(scope="session")
def random_decoder():
  """``random_decoder(config, seed=0) -> Decoder`` with random O(1)-logit weights."""
  return _random_decoder


@pytest.fixture(scope="module")
def run_cli(subprocess_env):
  """``run_cli(*flags) -> CompletedProcess`` of ``python -m jaxpost.main *flags``.

  Runs from the repository root on one CPU device, as a user's command does (the
  in-process tests run on 8 fake devices), with the module's compilation cache.
  """
  import subprocess
  import sys

  repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

  def run(*flags: str) -> subprocess.CompletedProcess:
    return subprocess.run(
      [sys.executable, "-m", "jaxpost.main", *flags],
      cwd=repo,
      capture_output=True,
      text=True,
      timeout=300,
      env={**subprocess_env, "XLA_FLAGS": ""},
    )

  return run
