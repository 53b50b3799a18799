"""Command groups that live outside cli/app.py; each exposes `register(app)`."""
