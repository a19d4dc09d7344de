"""Sweeps (``spartan.sweeps``): ``sweeps`` and the link to their child jobs, ``sweep_jobs``.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-03
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    existing = set(sa.inspect(op.get_bind()).get_table_names())
    if "sweeps" not in existing:
        op.create_table(
            "sweeps",
            sa.Column("id", sa.String(40), primary_key=True),
            sa.Column("owner", sa.String(100), nullable=False),
            sa.Column("name", sa.String(200)),
            sa.Column("axis", sa.String(16), nullable=False),
            sa.Column("targets", sa.JSON(), nullable=False),
            sa.Column("spec", sa.JSON(), nullable=False),
            sa.Column("idempotency_key", sa.String(200)),
            sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
            sa.UniqueConstraint("owner", "idempotency_key", name="uq_sweep_owner_idempotency"),
        )
        op.create_index("ix_sweeps_owner", "sweeps", ["owner"])
    if "sweep_jobs" not in existing:
        op.create_table(
            "sweep_jobs",
            sa.Column("sweep_id", sa.String(40), sa.ForeignKey("sweeps.id"), primary_key=True),
            sa.Column("position", sa.Integer(), primary_key=True),
            sa.Column("job_id", sa.String(40), sa.ForeignKey("jobs.id"), nullable=False),
            sa.Column("target", sa.Float(), nullable=False),
            sa.UniqueConstraint("job_id"),
        )


def downgrade() -> None:
    op.drop_table("sweep_jobs")
    op.drop_index("ix_sweeps_owner", table_name="sweeps")
    op.drop_table("sweeps")
