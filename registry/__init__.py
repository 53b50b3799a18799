"""A registry and release gate for fine-tuned models (LoRA adapters on a base model).

This package is the foundation (docs/design.md, "Layers"): the store, manifests,
references, database, policy format, channels, audit log, gate-run records and remotes.
It imports none of `gates`, `tui` or `cli`; they stand on it.
"""

__version__ = "0.1.0"
