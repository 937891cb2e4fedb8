"""usage watermarks

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-22 08:30:00

A close no longer writes its id on every usage event it settles: it records the highest event
id at the time (``period_closes.usage_upto``) while holding the group's new ``usage_gates``
row, which imports hold FOR SHARE while they write the group's events. Closes made before keep
``usage_upto`` NULL and their events keep ``close_id``, which nothing writes any more: its
foreign key and index go, and two indexes serve the new look-ups: a group's events by time, carrying every
column a close reads (PostgreSQL: answered from the index once the table is vacuumed), and by
id since its last close.
"""
from typing import Sequence, Union

from alembic import op
import sqlalchemy as sa


# revision identifiers, used by Alembic.
revision: str = '0004'
down_revision: Union[str, Sequence[str], None] = '0003'
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None


def upgrade() -> None:
    """Upgrade schema."""
    op.create_table('usage_gates',
    sa.Column('billing_group_id', sa.Integer(), autoincrement=False, nullable=False),
    sa.ForeignKeyConstraint(['billing_group_id'], ['billing_groups.id'], name=op.f('fk_usage_gates_billing_group_id_billing_groups')),
    sa.PrimaryKeyConstraint('billing_group_id', name=op.f('pk_usage_gates'))
    )
    op.execute('INSERT INTO usage_gates (billing_group_id) SELECT id FROM billing_groups')
    with op.batch_alter_table('period_closes', schema=None) as batch_op:
        batch_op.add_column(sa.Column('usage_upto', sa.BigInteger(), nullable=True))
    with op.batch_alter_table('usage_events', schema=None) as batch_op:
        batch_op.drop_constraint(batch_op.f('fk_usage_events_close_id_period_closes'), type_='foreignkey')
        batch_op.drop_index('ix_usage_events_group_close_ts')
        batch_op.create_index('ix_usage_events_group_ts', ['billing_group_id', 'ts'], unique=False, postgresql_include=['id', 'metric', 'project_id', 'quantity', 'close_id'])
        batch_op.create_index('ix_usage_events_group_id', ['billing_group_id', 'id'], unique=False, postgresql_include=['ts'])


def downgrade() -> None:
    """Downgrade schema: the watermarks are written out as close ids on the events again."""
    op.execute(
        'UPDATE usage_events SET close_id = ('
        ' SELECT c.id FROM period_closes c'
        ' WHERE c.billing_group_id = usage_events.billing_group_id'
        ' AND c.usage_upto IS NOT NULL'
        ' AND usage_events.id <= c.usage_upto AND usage_events.ts < c.period_end'
        ' ORDER BY c.period_end LIMIT 1)'
        ' WHERE close_id IS NULL'
    )
    with op.batch_alter_table('usage_events', schema=None) as batch_op:
        batch_op.drop_index('ix_usage_events_group_id')
        batch_op.drop_index('ix_usage_events_group_ts')
        batch_op.create_index('ix_usage_events_group_close_ts', ['billing_group_id', 'close_id', 'ts'], unique=False)
        batch_op.create_foreign_key(batch_op.f('fk_usage_events_close_id_period_closes'), 'period_closes', ['close_id'], ['id'])
    with op.batch_alter_table('period_closes', schema=None) as batch_op:
        batch_op.drop_column('usage_upto')
    op.drop_table('usage_gates')
