"""notebooks/: each .py (jupytext percent) agrees with its .ipynb, and every notebook runs
headless on tiny settings; a cell that raises fails the test."""

import pathlib
import sys

import pytest

jupytext = pytest.importorskip("jupytext", reason="the test extra installs jupytext")
nbformat = pytest.importorskip("nbformat", reason="the test extra installs nbformat")
nbclient = pytest.importorskip("nbclient", reason="the test extra installs nbclient")

ROOT = pathlib.Path(__file__).resolve().parents[1]
NOTEBOOKS = ROOT / "notebooks"
NAMES = ("quickstart", "rl_from_sft", "hf_checkpoint", "sweep_report")


def _cells(nb):
  return [(c.cell_type, c.source.strip()) for c in nb.cells]


def test_every_notebook_is_listed():
  assert sorted(p.stem for p in NOTEBOOKS.glob("*.py")) == sorted(NAMES)
  assert sorted(p.stem for p in NOTEBOOKS.glob("*.ipynb")) == sorted(NAMES)


@pytest.mark.parametrize("name", NAMES)
def test_pairs_in_sync(name):
  py = jupytext.read(NOTEBOOKS / f"{name}.py")
  ipynb = nbformat.read(NOTEBOOKS / f"{name}.ipynb", as_version=4)
  assert _cells(py) == _cells(ipynb), (
    f"notebooks/{name}.py and .ipynb differ: run jupytext --sync notebooks/{name}.py"
  )
  assert py.metadata["jupytext"]["formats"] == "ipynb,py:percent"
  for cell in ipynb.cells:
    if cell.cell_type == "code":
      assert not cell.outputs and cell.execution_count is None, "commit notebooks without outputs"
  text = "\n".join(src for _, src in _cells(py))
  assert 'IN_COLAB = "google.colab" in sys.modules' in text and "pip" in text  # Colab install
  assert "On a TPU VM" in text and "tpu/create.sh" in text and "tpu/setup.sh" in text
  assert 'os.environ.get("JAXPOST_NOTEBOOK_TINY") == "1"' in text


@pytest.fixture
def kernel_env(monkeypatch, subprocess_env):
  """The kernel inherits this process's environment: tiny settings, one CPU device, the
  session's zoo and the module's compilation cache (subprocesses of the sweep notebook too)."""
  for key, value in subprocess_env.items():
    if key.startswith("JAX_"):
      monkeypatch.setenv(key, value)
  monkeypatch.setenv("JAXPOST_NOTEBOOK_TINY", "1")
  monkeypatch.setenv("JAX_PLATFORMS", "cpu")
  monkeypatch.setenv("XLA_FLAGS", "")
  monkeypatch.setenv("MPLBACKEND", "Agg")


@pytest.mark.parametrize("name", NAMES)
def test_notebook_executes(name, kernel_env, tmp_path):
  nb = nbformat.read(NOTEBOOKS / f"{name}.ipynb", as_version=4)
  client = nbclient.NotebookClient(
    nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}
  )
  client.execute()  # raises CellExecutionError, naming the cell, if any cell raises
  printed = "".join(
    o.get("text", "")
    for c in nb.cells
    if c.cell_type == "code"
    for o in c.outputs
    if o.get("output_type") == "stream"
  )
  assert "tiny mode: True" in printed
  # The kernel ran this environment's Python, so it tested this checkout's install.
  assert f"python: {sys.prefix}" in printed
