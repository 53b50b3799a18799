"""Tests of the registry package: the store, manifests, database, channels, trust, remotes."""
