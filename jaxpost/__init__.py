"""jaxpost: LLM post-training as pure functions over one Flax NNX decoder."""

__version__ = "0.1.0"
