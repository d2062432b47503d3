"""Parameter-efficient tuning: LoRA adapters on any ``Linear`` of the decoder
(``jaxpost.peft.lora``) and their export in the PEFT format (``jaxpost.peft.export``)."""

from jaxpost.peft.lora import (
  LoRASettings,
  adapter_filter,
  add_lora,
  lora_targets,
  merge_lora,
  set_enabled,
)

__all__ = [
  "LoRASettings",
  "add_lora",
  "adapter_filter",
  "lora_targets",
  "merge_lora",
  "set_enabled",
]
