"""Alembic migrations of the store, packaged with the server (see store.migrate)."""
