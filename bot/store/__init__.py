"""Persistence: SQLModel tables, the engine, guarded updates and Alembic migrations."""
