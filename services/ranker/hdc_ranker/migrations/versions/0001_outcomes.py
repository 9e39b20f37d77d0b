"""deployment outcomes per site (success-rate estimate)

Revision ID: 0001
Revises:
"""

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "ranker_deployment_outcomes",
        sa.Column("deployment_uuid", sa.String(64), primary_key=True),
        sa.Column("site_id", sa.String(255), primary_key=True),
        sa.Column("succeeded", sa.Boolean, nullable=False),
        sa.Column("status", sa.String(32), nullable=False),
        sa.Column("finished_at", sa.Float, nullable=False),
    )
    op.create_index(
        "ix_ranker_deployment_outcomes_finished_at",
        "ranker_deployment_outcomes",
        ["finished_at"],
    )


def downgrade() -> None:
    op.drop_index("ix_ranker_deployment_outcomes_finished_at", "ranker_deployment_outcomes")
    op.drop_table("ranker_deployment_outcomes")
