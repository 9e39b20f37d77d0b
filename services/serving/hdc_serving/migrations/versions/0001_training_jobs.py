"""training jobs

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
        "serving_training_jobs",
        sa.Column("uuid", sa.String(32), primary_key=True),
        sa.Column("model", sa.String(200), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("args", sa.JSON, nullable=False),
        sa.Column("created_at", sa.DateTime, nullable=False),
        sa.Column("finished_at", sa.DateTime, nullable=True),
        sa.Column("progress", sa.Float, nullable=True),
        sa.Column("progress_message", sa.Text, nullable=True),
        sa.Column("message", sa.Text, nullable=True),
        sa.Column("result", sa.JSON, nullable=True),
        sa.Column("logs", sa.Text, nullable=False),
        sa.Column("owner", sa.String(300), nullable=False),
        sa.Column("pid", sa.Integer, nullable=True),
        sa.Column("heartbeat_at", sa.DateTime, nullable=True),
    )
    op.create_index("ix_serving_training_jobs_model", "serving_training_jobs", ["model"])
    op.create_index("ix_serving_training_jobs_status", "serving_training_jobs", ["status"])
    op.create_index("ix_serving_training_jobs_owner", "serving_training_jobs", ["owner"])


def downgrade() -> None:
    op.drop_table("serving_training_jobs")
