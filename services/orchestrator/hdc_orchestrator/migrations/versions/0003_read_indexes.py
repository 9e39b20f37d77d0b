"""indexes shaped like the API's reads

The deployment list filters by owner (or group) and pages newest first: the composite
indexes hand PostgreSQL the first page in order, with no sort of everything the owner has.
The history (log, events, SSE polling) reads one deployment's rows after an id: one index
on (deployment, id) serves it, and replaces the one on the deployment alone.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-23
"""

from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("orch_deployments", schema=None) as batch_op:
        batch_op.drop_index("ix_orch_owner")
        batch_op.create_index(
            "ix_orch_owner_created", ["owner_issuer", "owner_subject", "created_at"], unique=False
        )
        batch_op.create_index("ix_orch_group_created", ["user_group", "created_at"], unique=False)
    with op.batch_alter_table("orch_events", schema=None) as batch_op:
        batch_op.drop_index("ix_orch_events_deployment_uuid")
        batch_op.create_index(
            "ix_orch_events_deployment_id", ["deployment_uuid", "id"], unique=False
        )


def downgrade() -> None:
    with op.batch_alter_table("orch_events", schema=None) as batch_op:
        batch_op.drop_index("ix_orch_events_deployment_id")
        batch_op.create_index("ix_orch_events_deployment_uuid", ["deployment_uuid"], unique=False)
    with op.batch_alter_table("orch_deployments", schema=None) as batch_op:
        batch_op.drop_index("ix_orch_group_created")
        batch_op.drop_index("ix_orch_owner_created")
        batch_op.create_index("ix_orch_owner", ["owner_issuer", "owner_subject"], unique=False)
