"""notification outbox

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-22 12:00:00

One row per (invoice, step, recipient): the Slack messages owed for invoices (section 7),
with their delivery state, so each is sent at most once across crashes and replicas.
"""
from typing import Sequence, Union

from alembic import op
import billing_core.db.types
import sqlalchemy as sa


# revision identifiers, used by Alembic.
revision: str = '0002'
down_revision: Union[str, Sequence[str], None] = '0001'
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None


def upgrade() -> None:
    """Upgrade schema."""
    op.create_table('notification_outbox',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('invoice_id', sa.Integer(), nullable=False),
    sa.Column('step', sa.String(length=80), nullable=False),
    sa.Column('recipient', sa.String(length=48), nullable=False),
    sa.Column('state', sa.String(length=8), nullable=False),
    sa.Column('due_at', billing_core.db.types.UTCDateTime(), nullable=False),
    sa.Column('attempts', sa.Integer(), nullable=False),
    sa.Column('next_attempt_at', billing_core.db.types.UTCDateTime(), nullable=True),
    sa.Column('last_error', sa.Text(), nullable=True),
    sa.Column('note', sa.String(length=200), nullable=True),
    sa.Column('slack_channel', sa.String(length=32), nullable=True),
    sa.Column('slack_ts', sa.String(length=32), nullable=True),
    sa.Column('created_at', billing_core.db.types.UTCDateTime(), nullable=False),
    sa.Column('updated_at', billing_core.db.types.UTCDateTime(), nullable=False),
    sa.Column('finished_at', billing_core.db.types.UTCDateTime(), nullable=True),
    sa.CheckConstraint(
        "state IN ('pending', 'sending', 'sent', 'skipped', 'failed')",
        name=op.f('ck_notification_outbox_state'),
    ),
    sa.ForeignKeyConstraint(['invoice_id'], ['invoices.id'], name=op.f('fk_notification_outbox_invoice_id_invoices')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_notification_outbox')),
    sa.UniqueConstraint('invoice_id', 'step', 'recipient', name='uq_notification_outbox_delivery')
    )
    with op.batch_alter_table('notification_outbox', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_notification_outbox_invoice_id'), ['invoice_id'], unique=False)
        batch_op.create_index('ix_notification_outbox_state_next', ['state', 'next_attempt_at'], unique=False)


def downgrade() -> None:
    """Downgrade schema."""
    with op.batch_alter_table('notification_outbox', schema=None) as batch_op:
        batch_op.drop_index('ix_notification_outbox_state_next')
        batch_op.drop_index(batch_op.f('ix_notification_outbox_invoice_id'))

    op.drop_table('notification_outbox')
