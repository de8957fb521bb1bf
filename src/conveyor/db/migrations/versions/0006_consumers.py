"""consumers, their runs, scoped tokens, and spent blobs

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-30 05:50:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import mysql

TIMESTAMP = sa.DateTime().with_variant(mysql.DATETIME(fsp=6), "mysql", "mariadb")

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "consumers",
        sa.Column("name", sa.String(length=100), nullable=False),
        sa.Column("owner", sa.String(length=255), nullable=False),
        sa.Column("sha256", sa.String(length=64), nullable=False),
        sa.Column("filter", sa.Text(), nullable=False),
        sa.Column("pending_sha256", sa.String(length=64), nullable=True),
        sa.Column("pending_filter", sa.Text(), nullable=True),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("error", sa.Text(), nullable=False),
        sa.Column("allow_self", sa.Boolean(), nullable=False),
        sa.Column("max_depth", sa.Integer(), nullable=False),
        sa.Column("timeout_seconds", sa.Float(), nullable=False),
        sa.Column("memory_bytes", sa.BigInteger(), nullable=False),
        sa.Column("subscription_id", sa.String(length=36), nullable=True),
        sa.Column("setup_job_id", sa.BigInteger(), nullable=True),
        sa.Column("created_at", TIMESTAMP, nullable=False),
        sa.Column("updated_at", TIMESTAMP, nullable=False),
        sa.PrimaryKeyConstraint("name", name=op.f("pk_consumers")),
    )
    op.create_table(
        "consumer_runs",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=True,
            nullable=False,
        ),
        sa.Column("consumer", sa.String(length=100), nullable=False),
        sa.Column("event_id", sa.String(length=64), nullable=False),
        sa.Column("job_id", sa.BigInteger(), nullable=False),
        sa.Column("created_at", TIMESTAMP, nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_consumer_runs")),
        sa.UniqueConstraint("consumer", "event_id", name=op.f("uq_consumer_runs_consumer")),
    )
    with op.batch_alter_table("consumer_runs", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_consumer_runs_consumer"), ["consumer"], unique=False)
    with op.batch_alter_table("api_tokens", schema=None) as batch_op:
        batch_op.add_column(sa.Column("scope", sa.String(length=32), nullable=True))
        batch_op.add_column(sa.Column("expires_at", TIMESTAMP, nullable=True))
    op.create_table(
        "spent_blobs",
        sa.Column("sha256", sa.String(length=64), nullable=False),
        sa.Column("spent_at", TIMESTAMP, nullable=False),
        sa.PrimaryKeyConstraint("sha256", name=op.f("pk_spent_blobs")),
    )
    with op.batch_alter_table("spent_blobs", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_spent_blobs_spent_at"), ["spent_at"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("spent_blobs", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_spent_blobs_spent_at"))
    op.drop_table("spent_blobs")
    with op.batch_alter_table("api_tokens", schema=None) as batch_op:
        batch_op.drop_column("expires_at")
        batch_op.drop_column("scope")
    with op.batch_alter_table("consumer_runs", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_consumer_runs_consumer"))
    op.drop_table("consumer_runs")
    op.drop_table("consumers")
