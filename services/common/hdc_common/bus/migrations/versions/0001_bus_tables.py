"""Outbox and processed-message tables.

Revision ID: hdc_bus_0001
Revises:
Create Date: 2026-11-23
"""

import sqlalchemy as sa
from alembic import op

revision = "hdc_bus_0001"
down_revision = None
branch_labels = None
depends_on = None

_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "hdc_bus_outbox",
        sa.Column("id", _ID, primary_key=True, autoincrement=True),
        sa.Column("event_id", sa.String(64), nullable=False),
        sa.Column("event_type", sa.String(255), nullable=False),
        sa.Column("exchange", sa.String(64), nullable=False),
        sa.Column("routing_key", sa.String(255), nullable=False),
        sa.Column("body", sa.Text(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("sent_at", sa.DateTime(timezone=True), nullable=True),
    )
    op.create_index(
        "ix_hdc_bus_outbox_unsent",
        "hdc_bus_outbox",
        ["id"],
        postgresql_where=sa.text("sent_at IS NULL"),
        sqlite_where=sa.text("sent_at IS NULL"),
    )
    op.create_index("ix_hdc_bus_outbox_sent_at", "hdc_bus_outbox", ["sent_at"])
    op.create_table(
        "hdc_bus_processed",
        sa.Column("event_id", sa.String(64), primary_key=True),
        sa.Column("queue", sa.String(255), primary_key=True),
        sa.Column("processed_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index("ix_hdc_bus_processed_at", "hdc_bus_processed", ["processed_at"])


def downgrade() -> None:
    op.drop_table("hdc_bus_processed")
    op.drop_table("hdc_bus_outbox")
