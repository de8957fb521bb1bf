"""cart builds and pacifica ids

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-29 21:35:11.432401
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import mysql

TIMESTAMP = sa.DateTime().with_variant(mysql.DATETIME(fsp=6), "mysql", "mariadb")

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "pacifica_carts",
        sa.Column("uid", sa.String(length=255), nullable=False),
        sa.Column("cart_id", sa.BigInteger(), nullable=False),
        sa.Column("user", sa.String(length=255), nullable=False),
        sa.Column("bundle", sa.Boolean(), nullable=False),
        sa.Column("created_at", TIMESTAMP, nullable=False),
        sa.ForeignKeyConstraint(
            ["cart_id"],
            ["carts.id"],
            name=op.f("fk_pacifica_carts_cart_id_carts"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("uid", name=op.f("pk_pacifica_carts")),
    )
    with op.batch_alter_table("pacifica_carts", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_pacifica_carts_cart_id"), ["cart_id"], unique=False)

    op.create_table(
        "archive_names",
        sa.Column("name", sa.String(length=255), nullable=False),
        sa.Column("file_id", sa.BigInteger(), nullable=False),
        sa.ForeignKeyConstraint(
            ["file_id"],
            ["files.id"],
            name=op.f("fk_archive_names_file_id_files"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("name", name=op.f("pk_archive_names")),
        sa.UniqueConstraint("file_id", name=op.f("uq_archive_names_file_id")),
    )
    with op.batch_alter_table("cart_items", schema=None) as batch_op:
        batch_op.add_column(sa.Column("check_type", sa.String(length=32), nullable=True))
        batch_op.add_column(sa.Column("check_sum", sa.String(length=256), nullable=True))
        batch_op.add_column(sa.Column("remote_key", sa.String(length=64), nullable=True))
        batch_op.alter_column("file_id", existing_type=sa.BigInteger(), nullable=True)

    op.create_table(
        "cart_cache",
        sa.Column("key", sa.String(length=64), nullable=False),
        sa.Column("source", sa.Text(), nullable=False),
        sa.Column("remote_id", sa.String(length=255), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("size", sa.BigInteger(), nullable=True),
        sa.Column("sha256", sa.String(length=64), nullable=True),
        sa.Column("crc32", sa.BigInteger(), nullable=True),
        sa.Column("mtime", sa.Float(), nullable=True),
        sa.Column("lease_owner", sa.String(length=128), nullable=True),
        sa.Column("lease_expires_at", TIMESTAMP, nullable=True),
        sa.Column("last_used_at", TIMESTAMP, nullable=False),
        sa.Column("created_at", TIMESTAMP, nullable=False),
        sa.PrimaryKeyConstraint("key", name=op.f("pk_cart_cache")),
    )
    with op.batch_alter_table("cart_cache", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_cart_cache_last_used_at"), ["last_used_at"])
        batch_op.create_index(batch_op.f("ix_cart_cache_sha256"), ["sha256"])

    with op.batch_alter_table("cart_requesters", schema=None) as batch_op:
        batch_op.add_column(sa.Column("notify_kind", sa.String(length=16), nullable=True))
        batch_op.add_column(sa.Column("notify_url", sa.Text(), nullable=True))
        batch_op.add_column(sa.Column("email", sa.String(length=320), nullable=True))
        batch_op.add_column(sa.Column("name", sa.String(length=255), nullable=True))
        batch_op.add_column(sa.Column("external_id", sa.String(length=255), nullable=True))
        batch_op.add_column(sa.Column("notified_at", TIMESTAMP, nullable=True))
        batch_op.add_column(sa.Column("notify_claimed_until", TIMESTAMP, nullable=True))

    with op.batch_alter_table("carts", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("compression", sa.String(length=8), nullable=False, server_default="stored")
        )
        batch_op.add_column(
            sa.Column("manifest", sa.Boolean(), nullable=False, server_default=sa.true())
        )
        batch_op.add_column(sa.Column("missing", sa.JSON(), nullable=True))
        batch_op.add_column(sa.Column("job_id", sa.BigInteger(), nullable=True))
        batch_op.add_column(sa.Column("bundle_key", sa.Text(), nullable=True))
        batch_op.add_column(sa.Column("ready_at", TIMESTAMP, nullable=True))
        batch_op.add_column(sa.Column("expires_at", TIMESTAMP, nullable=True))
        batch_op.create_index(batch_op.f("ix_carts_expires_at"), ["expires_at"], unique=False)
    # JSON columns take no server default on MariaDB: fill existing rows, then require it.
    op.execute("UPDATE carts SET missing = '[]'")
    with op.batch_alter_table("carts", schema=None) as batch_op:
        batch_op.alter_column("missing", existing_type=sa.JSON(), nullable=False)


def downgrade() -> None:
    with op.batch_alter_table("carts", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_carts_expires_at"))
        batch_op.drop_column("expires_at")
        batch_op.drop_column("ready_at")
        batch_op.drop_column("bundle_key")
        batch_op.drop_column("job_id")
        batch_op.drop_column("missing")
        batch_op.drop_column("manifest")
        batch_op.drop_column("compression")

    with op.batch_alter_table("cart_requesters", schema=None) as batch_op:
        batch_op.drop_column("notify_claimed_until")
        batch_op.drop_column("notified_at")
        batch_op.drop_column("external_id")
        batch_op.drop_column("name")
        batch_op.drop_column("email")
        batch_op.drop_column("notify_url")
        batch_op.drop_column("notify_kind")

    op.drop_table("cart_cache")
    with op.batch_alter_table("cart_items", schema=None) as batch_op:
        batch_op.alter_column("file_id", existing_type=sa.BigInteger(), nullable=False)
        batch_op.drop_column("remote_key")
        batch_op.drop_column("check_sum")
        batch_op.drop_column("check_type")

    op.drop_table("archive_names")
    with op.batch_alter_table("pacifica_carts", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_pacifica_carts_cart_id"))

    op.drop_table("pacifica_carts")
