"""A registry and release gate for fine-tuned models (LoRA adapters on a base model)."""

__version__ = "0.1.0"
