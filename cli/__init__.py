"""The `registry` command (Typer): the top layer (docs/design.md, "Layers").

`cli.app` parses the command line and calls one service function of `registry`, `gates`
or `tui`; nothing below this package imports it (the import-linter contract in
pyproject.toml). The entry point `registry = "cli.app:main"` and `python -m cli` run it.
"""
