"""Command groups that live outside cli.py; each exposes `register(app)`."""
