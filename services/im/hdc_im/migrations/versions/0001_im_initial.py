"""im schema: infrastructures, VMs, cloud resources, jobs

Revision ID: 0001_im_initial
Revises:
Create Date: 2026-11-23
"""

import sqlalchemy as sa
from alembic import op

revision = "0001_im_initial"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "im_infrastructures",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("owner", sa.String(length=255), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("topology", sa.JSON(), nullable=False),
        sa.Column("tosca", sa.Text(), nullable=True),
        sa.Column("radl", sa.Text(), nullable=True),
        sa.Column("site", sa.JSON(), nullable=False),
        sa.Column("credentials", sa.Text(), nullable=True),
        sa.Column("deployment_id", sa.String(length=64), nullable=True),
        sa.Column("user_data_extra", sa.Text(), nullable=True),
        sa.Column("outputs", sa.JSON(), nullable=False),
        sa.Column("contmsg", sa.Text(), nullable=False),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("next_vm_index", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("updated_at", sa.DateTime(), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index(
        op.f("ix_im_infrastructures_owner"), "im_infrastructures", ["owner"], unique=False
    )
    op.create_table(
        "im_jobs",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("infrastructure_id", sa.String(length=36), nullable=False),
        sa.Column("kind", sa.String(length=32), nullable=False),
        sa.Column("payload", sa.JSON(), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("lease_owner", sa.String(length=64), nullable=True),
        sa.Column("lease_until", sa.DateTime(), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index(
        op.f("ix_im_jobs_infrastructure_id"), "im_jobs", ["infrastructure_id"], unique=False
    )
    op.create_index(op.f("ix_im_jobs_state"), "im_jobs", ["state"], unique=False)
    op.create_table(
        "im_resources",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("infrastructure_id", sa.String(length=36), nullable=False),
        sa.Column("kind", sa.String(length=32), nullable=False),
        sa.Column("name", sa.String(length=255), nullable=False),
        sa.Column("provider_id", sa.String(length=255), nullable=True),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.ForeignKeyConstraint(
            ["infrastructure_id"], ["im_infrastructures.id"], ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("infrastructure_id", "kind", "name"),
    )
    op.create_index(
        op.f("ix_im_resources_infrastructure_id"),
        "im_resources",
        ["infrastructure_id"],
        unique=False,
    )
    op.create_table(
        "im_vms",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("infrastructure_id", sa.String(length=36), nullable=False),
        sa.Column("index", sa.Integer(), nullable=False),
        sa.Column("node", sa.String(length=255), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("token", sa.String(length=64), nullable=False),
        sa.Column("provider_id", sa.String(length=255), nullable=True),
        sa.Column("public_ip", sa.String(length=64), nullable=True),
        sa.Column("private_ip", sa.String(length=64), nullable=True),
        sa.Column("ports", sa.JSON(), nullable=False),
        sa.Column("info", sa.JSON(), nullable=False),
        sa.Column("contmsg", sa.Text(), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(
            ["infrastructure_id"], ["im_infrastructures.id"], ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("infrastructure_id", "index"),
        sa.UniqueConstraint("token"),
    )
    op.create_index(
        op.f("ix_im_vms_infrastructure_id"), "im_vms", ["infrastructure_id"], unique=False
    )


def downgrade() -> None:
    op.drop_index(op.f("ix_im_vms_infrastructure_id"), table_name="im_vms")
    op.drop_table("im_vms")
    op.drop_index(op.f("ix_im_resources_infrastructure_id"), table_name="im_resources")
    op.drop_table("im_resources")
    op.drop_index(op.f("ix_im_jobs_state"), table_name="im_jobs")
    op.drop_index(op.f("ix_im_jobs_infrastructure_id"), table_name="im_jobs")
    op.drop_table("im_jobs")
    op.drop_index(op.f("ix_im_infrastructures_owner"), table_name="im_infrastructures")
    op.drop_table("im_infrastructures")
