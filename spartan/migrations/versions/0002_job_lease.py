"""A running job's lease: ``jobs.lease_expires_at`` and ``jobs.lease_holder``.

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-03

A database stamped from ``create_all`` may have them already (made by a build that had the
columns before this revision existed); only the missing ones are added.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

_COLUMNS = {
    "lease_expires_at": sa.DateTime(timezone=True),
    "lease_holder": sa.String(200),
}


def upgrade() -> None:
    present = {c["name"] for c in sa.inspect(op.get_bind()).get_columns("jobs")}
    with op.batch_alter_table("jobs") as batch:
        for name, type_ in _COLUMNS.items():
            if name not in present:
                batch.add_column(sa.Column(name, type_, nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        for name in _COLUMNS:
            batch.drop_column(name)
