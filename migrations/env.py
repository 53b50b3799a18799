"""Alembic environment: the registry's SQLModel tables are the target metadata.

The database URL comes from `config.attributes["database_url"]` (set by `registry init`),
else `$REGISTRY_DATABASE_URL`, else `sqlalchemy.url` in an alembic.ini.
"""

from __future__ import annotations

import os

from alembic import context
from sqlmodel import SQLModel

import registry.models  # noqa: F401  (registers the tables)
from registry.db import make_engine

config = context.config
target_metadata = SQLModel.metadata


def _url() -> str:
    url = config.attributes.get("database_url") or os.environ.get("REGISTRY_DATABASE_URL")
    return url or config.get_main_option("sqlalchemy.url")


def run_migrations_offline() -> None:
    context.configure(
        url=_url(), target_metadata=target_metadata, literal_binds=True, render_as_batch=True
    )
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    engine = make_engine(_url())
    with engine.connect() as connection:
        context.configure(
            connection=connection,
            target_metadata=target_metadata,
            render_as_batch=connection.dialect.name == "sqlite",
        )
        with context.begin_transaction():
            context.run_migrations()
    engine.dispose()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
