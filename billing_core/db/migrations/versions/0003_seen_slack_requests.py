"""seen slack requests

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-22 05:30:00

The signatures of Slack requests taken in the last five minutes, so an exact replay inside
Slack's freshness window is refused (section 6).
"""
from typing import Sequence, Union

from alembic import op
import billing_core.db.types
import sqlalchemy as sa


# revision identifiers, used by Alembic.
revision: str = '0003'
down_revision: Union[str, Sequence[str], None] = '0002'
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None


def upgrade() -> None:
    """Upgrade schema."""
    op.create_table('seen_slack_requests',
    sa.Column('signature', sa.String(length=80), nullable=False),
    sa.Column('expires_at', billing_core.db.types.UTCDateTime(), nullable=False),
    sa.PrimaryKeyConstraint('signature', name=op.f('pk_seen_slack_requests'))
    )
    with op.batch_alter_table('seen_slack_requests', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_seen_slack_requests_expires_at'), ['expires_at'], unique=False)


def downgrade() -> None:
    """Downgrade schema."""
    with op.batch_alter_table('seen_slack_requests', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_seen_slack_requests_expires_at'))
    op.drop_table('seen_slack_requests')
