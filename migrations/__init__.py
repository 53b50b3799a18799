"""The Alembic migrations, installed as the package `registry.migrations`.

The repository keeps this directory at its top; pyproject.toml maps it into the registry
package (`[tool.setuptools.package-dir]`), so an editable checkout and an installed wheel
both find it with `importlib.util.find_spec("registry.migrations")` (registry.db).
Alembic reads env.py, script.py.mako and versions/ from the directory; nothing imports
this package's modules.
"""
