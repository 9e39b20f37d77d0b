"""The bus's own tables: the transactional outbox and the processed-message ledger.

They live in each service's database (created by the bus's Alembic migration, which
`hdc_common.db.migrate` runs before the service's own), so an outbox row and a processed-
message row commit in the same transaction as the business change they belong to.
"""

from __future__ import annotations

import sqlalchemy as sa

metadata = sa.MetaData()

# SQLite only auto-increments an INTEGER PRIMARY KEY; PostgreSQL gets a bigint identity.
_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")

outbox = sa.Table(
    "hdc_bus_outbox",
    metadata,
    sa.Column("id", _ID, primary_key=True, autoincrement=True),
    sa.Column("event_id", sa.String(64), nullable=False),
    sa.Column("event_type", sa.String(255), nullable=False),
    sa.Column("exchange", sa.String(64), nullable=False),
    sa.Column("routing_key", sa.String(255), nullable=False),
    sa.Column("body", sa.Text(), nullable=False),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("sent_at", sa.DateTime(timezone=True), nullable=True),
)
# The relay only ever looks for unsent rows in id order; a partial index keeps that cheap
# however many sent rows are waiting to be pruned.
sa.Index(
    "ix_hdc_bus_outbox_unsent",
    outbox.c.id,
    postgresql_where=outbox.c.sent_at.is_(None),
    sqlite_where=outbox.c.sent_at.is_(None),
)
sa.Index("ix_hdc_bus_outbox_sent_at", outbox.c.sent_at)

processed = sa.Table(
    "hdc_bus_processed",
    metadata,
    # One row per (event, consuming queue): the same event fans out to several queues and
    # each of them must apply it once.
    sa.Column("event_id", sa.String(64), primary_key=True),
    sa.Column("queue", sa.String(255), primary_key=True),
    sa.Column("processed_at", sa.DateTime(timezone=True), nullable=False),
)
sa.Index("ix_hdc_bus_processed_at", processed.c.processed_at)
