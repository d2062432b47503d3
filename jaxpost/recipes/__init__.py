"""Recipes: the outer loops, one per paradigm, each readable top to bottom.

A recipe module registers its ``run(config, workdir) -> dict`` (``@register(name)``) and
declares what its config needs
beyond the shared sections of ``configs/base.py``:

  LOSS_FAMILIES       the loss families it trains (``losses.registry``); the config gets
                      one ``loss.<name>`` section per registered loss of these families
                      (empty for a recipe that trains no language model: ``detect``);
  DEFAULT_LOSS        ``loss.name`` of a fresh config (None with no families);
  config_sections(c)  optional: adds the recipe's own sections (e.g. ``rl``, ``reward``);
  validate(c)         optional: checks them (``config_lib.validate`` calls it, once).
"""

from __future__ import annotations

import sys

from jaxpost.registry import Registry

# config.recipe -> its ``run(config, workdir) -> dict`` (registered in its module).
_BUILTINS = ("sft", "rl", "mot", "gkd", "detect", "merge", "federated", "p2d", "cycle_instruct")
RECIPES = Registry("recipe", builtins=tuple(f"jaxpost.recipes.{m}" for m in _BUILTINS))
register = RECIPES.register


def get(name: str):
  """The module of recipe ``name`` (its ``run``, ``LOSS_FAMILIES``, sections, ...)."""
  return sys.modules[RECIPES.get(name).__module__]


def add_config_sections(c, recipe: str) -> None:
  """Adds ``recipe``'s own sections and its losses' ``loss.<name>`` sections to ``c``."""
  from jaxpost.losses import LOSSES

  module = get(recipe)
  if hasattr(module, "config_sections"):
    module.config_sections(c)
  if module.DEFAULT_LOSS is not None:
    c.loss.name = module.DEFAULT_LOSS
  for family in module.LOSS_FAMILIES:
    for name in LOSSES.names(family):
      c.loss[name] = LOSSES.hparams_config(name)
