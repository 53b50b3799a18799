"""The gate engine and the gates.

Models are loaded only through `gates.modeling` (a package, imported lazily by the model
gates); its docstring lists every place under gates/ that imports torch, transformers or
peft. `gates.tiny` builds the tiny projects the demo, the tests and the benchmarks use.
"""
