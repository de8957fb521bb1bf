"""mirrors

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-29 23:53:56.326548
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import mysql

TIMESTAMP = sa.DateTime().with_variant(mysql.DATETIME(fsp=6), "mysql", "mariadb")

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "mirrors",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=True,
            nullable=False,
        ),
        sa.Column("name", sa.String(length=100), nullable=False),
        sa.Column("owner", sa.String(length=255), nullable=False),
        sa.Column("definition", sa.JSON(), nullable=False),
        sa.Column("origin", sa.String(length=16), nullable=False),
        sa.Column("last_release", sa.String(length=255), nullable=True),
        sa.Column("last_transaction_id", sa.BigInteger(), nullable=True),
        sa.Column("schedule", sa.String(length=100), nullable=True),
        sa.Column("next_run_at", TIMESTAMP, nullable=True),
        sa.Column("created_at", TIMESTAMP, nullable=False),
        sa.Column("updated_at", TIMESTAMP, nullable=False),
        sa.ForeignKeyConstraint(
            ["last_transaction_id"],
            ["transactions.id"],
            name=op.f("fk_mirrors_last_transaction_id_transactions"),
            ondelete="SET NULL",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_mirrors")),
        sa.UniqueConstraint("name", name=op.f("uq_mirrors_name")),
    )
    with op.batch_alter_table("mirrors", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_mirrors_next_run_at"), ["next_run_at"], unique=False)
        batch_op.create_index(batch_op.f("ix_mirrors_owner"), ["owner"], unique=False)

    op.create_table(
        "mirror_runs",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=True,
            nullable=False,
        ),
        sa.Column("mirror_id", sa.BigInteger(), nullable=False),
        sa.Column("job_id", sa.BigInteger(), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("release", sa.String(length=255), nullable=True),
        sa.Column("listing_digest", sa.String(length=64), nullable=True),
        sa.Column("listed", sa.Boolean(), nullable=False),
        sa.Column("files_total", sa.Integer(), nullable=False),
        sa.Column("files_done", sa.Integer(), nullable=False),
        sa.Column("files_reused", sa.Integer(), nullable=False),
        sa.Column("files_failed", sa.Integer(), nullable=False),
        sa.Column("bytes_total", sa.BigInteger(), nullable=False),
        sa.Column("bytes_done", sa.BigInteger(), nullable=False),
        sa.Column("error", sa.Text(), nullable=False),
        sa.Column("cancel_requested", sa.Boolean(), nullable=False),
        sa.Column("transaction_id", sa.BigInteger(), nullable=True),
        sa.Column("finished_at", TIMESTAMP, nullable=True),
        sa.Column("created_at", TIMESTAMP, nullable=False),
        sa.Column("updated_at", TIMESTAMP, nullable=False),
        sa.ForeignKeyConstraint(
            ["job_id"], ["jobs.id"], name=op.f("fk_mirror_runs_job_id_jobs"), ondelete="CASCADE"
        ),
        sa.ForeignKeyConstraint(
            ["mirror_id"],
            ["mirrors.id"],
            name=op.f("fk_mirror_runs_mirror_id_mirrors"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["transaction_id"],
            ["transactions.id"],
            name=op.f("fk_mirror_runs_transaction_id_transactions"),
            ondelete="SET NULL",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_mirror_runs")),
        sa.UniqueConstraint("job_id", name=op.f("uq_mirror_runs_job_id")),
    )
    with op.batch_alter_table("mirror_runs", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_mirror_runs_mirror_id"), ["mirror_id"], unique=False)
        batch_op.create_index(batch_op.f("ix_mirror_runs_state"), ["state"], unique=False)

    op.create_table(
        "mirror_run_files",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=True,
            nullable=False,
        ),
        sa.Column("run_id", sa.BigInteger(), nullable=False),
        sa.Column("source_index", sa.Integer(), nullable=False),
        sa.Column("path", sa.Text(), nullable=False),
        sa.Column("save_as", sa.Text(), nullable=False),
        sa.Column("url", sa.Text(), nullable=False),
        sa.Column("size", sa.BigInteger(), nullable=True),
        sa.Column("mtime", TIMESTAMP, nullable=True),
        sa.Column("fingerprint", sa.String(length=255), nullable=True),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("sha256", sa.String(length=64), nullable=True),
        sa.Column("md5", sa.String(length=32), nullable=True),
        sa.Column("crc32", sa.BigInteger(), nullable=True),
        sa.Column("bytes_done", sa.BigInteger(), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("error", sa.Text(), nullable=False),
        sa.ForeignKeyConstraint(
            ["run_id"],
            ["mirror_runs.id"],
            name=op.f("fk_mirror_run_files_run_id_mirror_runs"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_mirror_run_files")),
    )
    with op.batch_alter_table("mirror_run_files", schema=None) as batch_op:
        batch_op.create_index("ix_mirror_run_files_run_id_state", ["run_id", "state"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("mirror_run_files", schema=None) as batch_op:
        batch_op.drop_index("ix_mirror_run_files_run_id_state")

    op.drop_table("mirror_run_files")
    with op.batch_alter_table("mirror_runs", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_mirror_runs_state"))
        batch_op.drop_index(batch_op.f("ix_mirror_runs_mirror_id"))

    op.drop_table("mirror_runs")
    with op.batch_alter_table("mirrors", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_mirrors_owner"))
        batch_op.drop_index(batch_op.f("ix_mirrors_next_run_at"))

    op.drop_table("mirrors")
