"""Recipes: the outer loops, one per paradigm, each readable top to bottom."""

import importlib

# config.recipe -> module with ``run(config, workdir) -> dict``.
RECIPES = {"sft": "jaxpost.recipes.sft", "rl": "jaxpost.recipes.rl"}


def get(name: str):
  if name not in RECIPES:
    raise KeyError(f"unknown recipe {name!r}; known: {sorted(RECIPES)}")
  return importlib.import_module(RECIPES[name])
