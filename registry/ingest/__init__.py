"""Ingest: turn user directories and files into component manifests (one module per kind)."""
