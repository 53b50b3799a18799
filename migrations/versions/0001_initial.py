"""initial schema

Revision ID: 0001_initial
Revises: 
Create Date: 2026-11-29 04:34:51.533158
"""
from alembic import op
import sqlalchemy as sa
import sqlmodel


revision = '0001_initial'
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    
    op.create_table('audit_head',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('seq', sa.Integer(), nullable=False),
    sa.Column('digest', sqlmodel.sql.sqltypes.AutoString(length=71), nullable=True),
    sa.PrimaryKeyConstraint('id')
    )
    op.create_table('bundle',
    sa.Column('digest', sqlmodel.sql.sqltypes.AutoString(length=71), nullable=False),
    sa.Column('name', sqlmodel.sql.sqltypes.AutoString(length=128), nullable=False),
    sa.Column('version', sa.Integer(), nullable=False),
    sa.Column('parent', sqlmodel.sql.sqltypes.AutoString(length=71), nullable=True),
    sa.Column('size', sa.BigInteger(), nullable=False),
    sa.Column('created_at', sqlmodel.sql.sqltypes.AutoString(length=32), nullable=False),
    sa.Column('created_by', sqlmodel.sql.sqltypes.AutoString(length=128), nullable=False),
    sa.PrimaryKeyConstraint('digest'),
    sa.UniqueConstraint('name', 'version', name='uq_bundle_name_version')
    )
    with op.batch_alter_table('bundle', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_bundle_name'), ['name'], unique=False)

    op.create_table('event',
    sa.Column('seq', sa.Integer(), nullable=False),
    sa.Column('digest', sqlmodel.sql.sqltypes.AutoString(length=71), nullable=False),
    sa.Column('prev', sqlmodel.sql.sqltypes.AutoString(length=71), nullable=True),
    sa.Column('action', sqlmodel.sql.sqltypes.AutoString(length=32), nullable=False),
    sa.Column('name', sqlmodel.sql.sqltypes.AutoString(length=128), nullable=True),
    sa.Column('channel', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=True),
    sa.Column('from_digest', sqlmodel.sql.sqltypes.AutoString(length=71), nullable=True),
    sa.Column('to_digest', sqlmodel.sql.sqltypes.AutoString(length=71), nullable=True),
    sa.Column('actor', sqlmodel.sql.sqltypes.AutoString(length=128), nullable=False),
    sa.Column('reason', sa.Text(), nullable=False),
    sa.Column('policy_digest', sqlmodel.sql.sqltypes.AutoString(length=71), nullable=True),
    sa.Column('forced', sa.Boolean(), nullable=False),
    sa.Column('created_at', sqlmodel.sql.sqltypes.AutoString(length=32), nullable=False),
    sa.PrimaryKeyConstraint('seq'),
    sa.UniqueConstraint('digest')
    )
    with op.batch_alter_table('event', schema=None) as batch_op:
        batch_op.create_index('ix_event_name_channel', ['name', 'channel'], unique=False)

    op.create_table('remote',
    sa.Column('name', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
    sa.Column('url', sa.Text(), nullable=False),
    sa.Column('options', sa.Text(), nullable=False),
    sa.PrimaryKeyConstraint('name')
    )
    op.create_table('setting',
    sa.Column('key', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
    sa.Column('value', sa.Text(), nullable=False),
    sa.PrimaryKeyConstraint('key')
    )
    op.create_table('bundle_component',
    sa.Column('bundle_digest', sqlmodel.sql.sqltypes.AutoString(length=71), nullable=False),
    sa.Column('kind', sqlmodel.sql.sqltypes.AutoString(length=32), nullable=False),
    sa.Column('digest', sqlmodel.sql.sqltypes.AutoString(length=71), nullable=False),
    sa.Column('size', sa.BigInteger(), nullable=False),
    sa.ForeignKeyConstraint(['bundle_digest'], ['bundle.digest'], ),
    sa.PrimaryKeyConstraint('bundle_digest', 'kind')
    )
    with op.batch_alter_table('bundle_component', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_bundle_component_digest'), ['digest'], unique=False)

    op.create_table('channel',
    sa.Column('name', sqlmodel.sql.sqltypes.AutoString(length=128), nullable=False),
    sa.Column('channel', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
    sa.Column('bundle_digest', sqlmodel.sql.sqltypes.AutoString(length=71), nullable=False),
    sa.Column('revision', sa.Integer(), nullable=False),
    sa.Column('head_event', sqlmodel.sql.sqltypes.AutoString(length=71), nullable=False),
    sa.Column('updated_at', sqlmodel.sql.sqltypes.AutoString(length=32), nullable=False),
    sa.ForeignKeyConstraint(['bundle_digest'], ['bundle.digest'], ),
    sa.PrimaryKeyConstraint('name', 'channel')
    )
    op.create_table('gate_run',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('bundle_digest', sqlmodel.sql.sqltypes.AutoString(length=71), nullable=False),
    sa.Column('gate', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
    sa.Column('gate_version', sqlmodel.sql.sqltypes.AutoString(length=32), nullable=False),
    sa.Column('policy_digest', sqlmodel.sql.sqltypes.AutoString(length=71), nullable=True),
    sa.Column('status', sqlmodel.sql.sqltypes.AutoString(length=16), nullable=False),
    sa.Column('metrics', sa.Text(), nullable=False),
    sa.Column('thresholds', sa.Text(), nullable=False),
    sa.Column('inputs', sa.Text(), nullable=False),
    sa.Column('environment', sa.Text(), nullable=False),
    sa.Column('evidence_digest', sqlmodel.sql.sqltypes.AutoString(length=71), nullable=True),
    sa.Column('error', sa.Text(), nullable=True),
    sa.Column('actor', sqlmodel.sql.sqltypes.AutoString(length=128), nullable=False),
    sa.Column('started_at', sqlmodel.sql.sqltypes.AutoString(length=32), nullable=False),
    sa.Column('ended_at', sqlmodel.sql.sqltypes.AutoString(length=32), nullable=False),
    sa.ForeignKeyConstraint(['bundle_digest'], ['bundle.digest'], ),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('gate_run', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_gate_run_bundle_digest'), ['bundle_digest'], unique=False)

    # The audit chain's head row: every append locks it (see registry/audit.py).
    op.execute("INSERT INTO audit_head (id, seq, digest) VALUES (1, 0, NULL)")

    


def downgrade() -> None:
    
    with op.batch_alter_table('gate_run', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_gate_run_bundle_digest'))

    op.drop_table('gate_run')
    op.drop_table('channel')
    with op.batch_alter_table('bundle_component', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_bundle_component_digest'))

    op.drop_table('bundle_component')
    op.drop_table('setting')
    op.drop_table('remote')
    with op.batch_alter_table('event', schema=None) as batch_op:
        batch_op.drop_index('ix_event_name_channel')

    op.drop_table('event')
    with op.batch_alter_table('bundle', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_bundle_name'))

    op.drop_table('bundle')
    op.drop_table('audit_head')
    
