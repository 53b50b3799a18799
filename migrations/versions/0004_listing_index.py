"""listing index: `registry ls` reads every column it shows from one covering index

Revision ID: 0004_listing_index
Revises: 0003_sweep
Create Date: 2026-12-04 20:00:00.000000

Every column `ls` shows, in name order: a full listing walks the index and formats rows
as it goes, with no table lookup per row and no sort of the whole table before its first
line (only each name's versions are put newest first, a name at a time). Ascending, not
`version DESC`: SQLite's reflection drops the direction, so `alembic check` could not
compare it, and the per-name sort costs the same (registry/bundles.py, `ls_table_stream`).
"""
from alembic import op


revision = '0004_listing_index'
down_revision = '0003_sweep'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index(
        'ix_bundle_listing',
        'bundle',
        ['name', 'version', 'digest', 'size', 'created_at'],
        unique=False,
    )


def downgrade() -> None:
    op.drop_index('ix_bundle_listing', table_name='bundle')
