"""Database: SQLAlchemy 2 models, engines and sessions, Alembic migrations."""

from conveyor.db.engine import Database, DatabaseUnavailable

__all__ = ["Database", "DatabaseUnavailable"]
