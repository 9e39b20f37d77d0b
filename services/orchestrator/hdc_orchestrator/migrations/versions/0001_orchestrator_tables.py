"""orchestrator tables

Revision ID: 0001
Revises:
Create Date: 2026-11-23
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy import Text
from sqlalchemy.dialects import postgresql

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "orch_callbacks",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=True,
            nullable=False,
        ),
        sa.Column("deployment_uuid", sa.String(length=36), nullable=False),
        sa.Column("owner_subject", sa.String(length=255), nullable=False),
        sa.Column("owner_issuer", sa.String(length=512), nullable=False),
        sa.Column("user_group", sa.String(length=255), nullable=True),
        sa.Column("url", sa.Text(), nullable=False),
        sa.Column("status", sa.String(length=32), nullable=False),
        sa.Column("body", sa.Text(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("next_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("delivered_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("last_code", sa.Integer(), nullable=True),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("orch_callbacks", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_orch_callbacks_deployment_uuid"), ["deployment_uuid"], unique=False
        )
        batch_op.create_index(batch_op.f("ix_orch_callbacks_next_at"), ["next_at"], unique=False)

    op.create_table(
        "orch_deployments",
        sa.Column("uuid", sa.String(length=36), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("status", sa.String(length=32), nullable=False),
        sa.Column("status_reason", sa.Text(), nullable=True),
        sa.Column(
            "status_reasons",
            sa.JSON().with_variant(postgresql.JSONB(astext_type=Text()), "postgresql"),
            nullable=False,
        ),
        sa.Column("task", sa.String(length=40), nullable=False),
        sa.Column("operation", sa.String(length=16), nullable=False),
        sa.Column("owner_subject", sa.String(length=255), nullable=False),
        sa.Column("owner_issuer", sa.String(length=512), nullable=False),
        sa.Column("user_group", sa.String(length=255), nullable=True),
        sa.Column("callback", sa.Text(), nullable=True),
        # template, resolved_template, secret_values, pending_template: Fernet-sealed text
        sa.Column("template", sa.Text(), nullable=False),
        sa.Column("resolved_template", sa.Text(), nullable=False),
        sa.Column("secret_values", sa.Text(), nullable=False),
        sa.Column(
            "requirements",
            sa.JSON().with_variant(postgresql.JSONB(astext_type=Text()), "postgresql"),
            nullable=False,
        ),
        sa.Column("timeout_mins", sa.Integer(), nullable=False),
        sa.Column("provider_timeout_mins", sa.Integer(), nullable=False),
        sa.Column("max_providers_retry", sa.Integer(), nullable=True),
        sa.Column("keep_last_attempt", sa.Boolean(), nullable=False),
        sa.Column("deadline_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("retry_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column(
            "outputs",
            sa.JSON().with_variant(postgresql.JSONB(astext_type=Text()), "postgresql"),
            nullable=True,
        ),
        sa.Column("physical_id", sa.String(length=64), nullable=True),
        sa.Column("cloud_provider_name", sa.String(length=255), nullable=True),
        sa.Column(
            "cloud_provider_endpoint",
            sa.JSON().with_variant(postgresql.JSONB(astext_type=Text()), "postgresql"),
            nullable=True,
        ),
        sa.Column(
            "placement",
            sa.JSON().with_variant(postgresql.JSONB(astext_type=Text()), "postgresql"),
            nullable=True,
        ),
        sa.Column("pending_template", sa.Text(), nullable=True),
        sa.Column("idempotency_key", sa.String(length=255), nullable=True),
        sa.Column("request_hash", sa.String(length=64), nullable=True),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("uuid"),
        sa.UniqueConstraint(
            "owner_issuer", "owner_subject", "idempotency_key", name="uq_orch_idem"
        ),
    )
    with op.batch_alter_table("orch_deployments", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_orch_deployments_created_at"), ["created_at"], unique=False
        )
        batch_op.create_index(
            batch_op.f("ix_orch_deployments_deadline_at"), ["deadline_at"], unique=False
        )
        batch_op.create_index(
            batch_op.f("ix_orch_deployments_retry_at"), ["retry_at"], unique=False
        )
        batch_op.create_index(batch_op.f("ix_orch_deployments_status"), ["status"], unique=False)
        batch_op.create_index(
            batch_op.f("ix_orch_deployments_user_group"), ["user_group"], unique=False
        )
        batch_op.create_index("ix_orch_owner", ["owner_issuer", "owner_subject"], unique=False)

    op.create_table(
        "orch_attempts",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=True,
            nullable=False,
        ),
        sa.Column("deployment_uuid", sa.String(length=36), nullable=False),
        sa.Column("number", sa.Integer(), nullable=False),
        sa.Column("infrastructure_id", sa.String(length=36), nullable=False),
        sa.Column("site_id", sa.String(length=255), nullable=False),
        sa.Column("service_id", sa.String(length=255), nullable=False),
        sa.Column(
            "site",
            sa.JSON().with_variant(postgresql.JSONB(astext_type=Text()), "postgresql"),
            nullable=False,
        ),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("deadline_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("infra_state", sa.String(length=16), nullable=False),
        sa.Column("error", sa.Text(), nullable=True),
        sa.ForeignKeyConstraint(["deployment_uuid"], ["orch_deployments.uuid"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("infrastructure_id"),
    )
    with op.batch_alter_table("orch_attempts", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_orch_attempts_deadline_at"), ["deadline_at"], unique=False
        )
        batch_op.create_index(
            batch_op.f("ix_orch_attempts_deployment_uuid"), ["deployment_uuid"], unique=False
        )
        batch_op.create_index(batch_op.f("ix_orch_attempts_state"), ["state"], unique=False)

    op.create_table(
        "orch_events",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=True,
            nullable=False,
        ),
        sa.Column("deployment_uuid", sa.String(length=36), nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("kind", sa.String(length=64), nullable=False),
        sa.Column("status", sa.String(length=32), nullable=True),
        sa.Column("provider", sa.String(length=255), nullable=True),
        sa.Column("message", sa.Text(), nullable=True),
        sa.ForeignKeyConstraint(["deployment_uuid"], ["orch_deployments.uuid"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("orch_events", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_orch_events_deployment_uuid"), ["deployment_uuid"], unique=False
        )

    op.create_table(
        "orch_resources",
        sa.Column("uuid", sa.String(length=36), nullable=False),
        sa.Column("deployment_uuid", sa.String(length=36), nullable=False),
        sa.Column("position", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("node_name", sa.String(length=255), nullable=False),
        sa.Column("node_type", sa.String(length=255), nullable=False),
        sa.Column(
            "type_chain",
            sa.JSON().with_variant(postgresql.JSONB(astext_type=Text()), "postgresql"),
            nullable=False,
        ),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("physical_id", sa.String(length=255), nullable=True),
        sa.Column(
            "required_by",
            sa.JSON().with_variant(postgresql.JSONB(astext_type=Text()), "postgresql"),
            nullable=False,
        ),
        sa.Column(
            "meta",
            sa.JSON().with_variant(postgresql.JSONB(astext_type=Text()), "postgresql"),
            nullable=True,
        ),
        sa.ForeignKeyConstraint(["deployment_uuid"], ["orch_deployments.uuid"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("uuid"),
    )
    with op.batch_alter_table("orch_resources", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_orch_resources_deployment_uuid"), ["deployment_uuid"], unique=False
        )


def downgrade() -> None:
    with op.batch_alter_table("orch_resources", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_orch_resources_deployment_uuid"))

    op.drop_table("orch_resources")
    with op.batch_alter_table("orch_events", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_orch_events_deployment_uuid"))

    op.drop_table("orch_events")
    with op.batch_alter_table("orch_attempts", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_orch_attempts_state"))
        batch_op.drop_index(batch_op.f("ix_orch_attempts_deployment_uuid"))
        batch_op.drop_index(batch_op.f("ix_orch_attempts_deadline_at"))

    op.drop_table("orch_attempts")
    with op.batch_alter_table("orch_deployments", schema=None) as batch_op:
        batch_op.drop_index("ix_orch_owner")
        batch_op.drop_index(batch_op.f("ix_orch_deployments_user_group"))
        batch_op.drop_index(batch_op.f("ix_orch_deployments_status"))
        batch_op.drop_index(batch_op.f("ix_orch_deployments_retry_at"))
        batch_op.drop_index(batch_op.f("ix_orch_deployments_deadline_at"))
        batch_op.drop_index(batch_op.f("ix_orch_deployments_created_at"))

    op.drop_table("orch_deployments")
    with op.batch_alter_table("orch_callbacks", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_orch_callbacks_next_at"))
        batch_op.drop_index(batch_op.f("ix_orch_callbacks_deployment_uuid"))

    op.drop_table("orch_callbacks")
