"""`python -m cli ARGS` runs the `registry` command (as the entry point does)."""

from cli.app import main

main()
