"""initial schema

Revision ID: 0001
Revises:
Create Date: 2026-11-23 11:40:39.231924
"""

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "vr_overlays",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("name", sa.String(length=128), nullable=False),
        sa.Column("cidr", sa.String(length=64), nullable=False),
        sa.Column("site_prefix", sa.Integer(), nullable=False),
        sa.Column("topology", sa.String(length=16), nullable=False),
        sa.Column("listen_port", sa.Integer(), nullable=False),
        sa.Column("keepalive_s", sa.Integer(), nullable=False),
        sa.Column("owner_subject", sa.String(length=255), nullable=False),
        sa.Column("owner_issuer", sa.String(length=255), nullable=False),
        sa.Column("owner_group", sa.String(length=255), nullable=True),
        sa.Column("next_index", sa.Integer(), nullable=False),
        sa.Column("config_version", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_table(
        "vr_sites",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("overlay_id", sa.String(length=36), nullable=False),
        sa.Column("name", sa.String(length=128), nullable=False),
        sa.Column("role", sa.String(length=8), nullable=False),
        sa.Column("block_index", sa.Integer(), nullable=False),
        sa.Column("subnet", sa.String(length=64), nullable=False),
        sa.Column("tunnel_address", sa.String(length=64), nullable=False),
        sa.Column("nat", sa.Boolean(), nullable=False),
        sa.Column("endpoint", sa.String(length=300), nullable=True),
        sa.Column("observed_endpoint", sa.String(length=300), nullable=True),
        sa.Column("public_key", sa.String(length=64), nullable=True),
        sa.Column("agent_secret_hash", sa.String(length=64), nullable=True),
        sa.Column("rotation_requested", sa.Boolean(), nullable=False),
        sa.Column("key_rotated_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("enrolled_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("last_heartbeat_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("applied_config_version", sa.Integer(), nullable=True),
        sa.Column("online", sa.Boolean(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["overlay_id"], ["vr_overlays.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("agent_secret_hash"),
        sa.UniqueConstraint("overlay_id", "block_index", name="uq_vr_sites_block"),
        sa.UniqueConstraint("overlay_id", "name", name="uq_vr_sites_name"),
        sa.UniqueConstraint("overlay_id", "public_key", name="uq_vr_sites_public_key"),
    )
    with op.batch_alter_table("vr_sites", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_vr_sites_overlay_id"), ["overlay_id"], unique=False)

    op.create_table(
        "vr_enrolment_tokens",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("site_id", sa.String(length=36), nullable=False),
        sa.Column("token_hash", sa.String(length=64), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("used_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["site_id"], ["vr_sites.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("token_hash"),
    )
    with op.batch_alter_table("vr_enrolment_tokens", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_vr_enrolment_tokens_site_id"), ["site_id"], unique=False
        )

    op.create_table(
        "vr_private_ranges",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("overlay_id", sa.String(length=36), nullable=False),
        sa.Column("site_id", sa.String(length=36), nullable=False),
        sa.Column("cidr", sa.String(length=64), nullable=False),
        sa.ForeignKeyConstraint(["overlay_id"], ["vr_overlays.id"], ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["site_id"], ["vr_sites.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("vr_private_ranges", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_vr_private_ranges_overlay_id"), ["overlay_id"], unique=False
        )
        batch_op.create_index(batch_op.f("ix_vr_private_ranges_site_id"), ["site_id"], unique=False)

    op.create_table(
        "vr_tunnels",
        sa.Column("site_id", sa.String(length=36), nullable=False),
        sa.Column("peer_public_key", sa.String(length=64), nullable=False),
        sa.Column("latest_handshake", sa.DateTime(timezone=True), nullable=True),
        sa.Column("rx_bytes", sa.BigInteger(), nullable=False),
        sa.Column("tx_bytes", sa.BigInteger(), nullable=False),
        sa.Column("endpoint", sa.String(length=300), nullable=True),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["site_id"], ["vr_sites.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("site_id", "peer_public_key"),
    )


def downgrade() -> None:
    op.drop_table("vr_tunnels")
    with op.batch_alter_table("vr_private_ranges", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_vr_private_ranges_site_id"))
        batch_op.drop_index(batch_op.f("ix_vr_private_ranges_overlay_id"))

    op.drop_table("vr_private_ranges")
    with op.batch_alter_table("vr_enrolment_tokens", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_vr_enrolment_tokens_site_id"))

    op.drop_table("vr_enrolment_tokens")
    with op.batch_alter_table("vr_sites", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_vr_sites_overlay_id"))

    op.drop_table("vr_sites")
    op.drop_table("vr_overlays")
