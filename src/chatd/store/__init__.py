"""Storage: sessions, turns and keys in SQLite or PostgreSQL, behind the engine's ports.

What callers use is here; the modules behind it are `connect` (a URL to a database and a
ready store), `migrate` (the shipped Alembic revisions), `database` (running each call as one
synchronous function), `sessions` (SqlStore, the session repository), `key_store`
(SqlKeyStore), `sqlite_fast` (SQLite statements run on the driver, past SQLAlchemy), and the
tables, rows, codec, queries and paging they share. Nothing here imports the engine or the API.
"""

from chatd.store.connect import create_database, open_store, parse_database_url
from chatd.store.database import Database
from chatd.store.key_store import SqlKeyStore
from chatd.store.migrate import SCHEMA_HEAD, schema_is_current, upgrade
from chatd.store.sessions import SqlStore

__all__ = [
    "SCHEMA_HEAD",
    "Database",
    "SqlKeyStore",
    "SqlStore",
    "create_database",
    "open_store",
    "parse_database_url",
    "schema_is_current",
    "upgrade",
]
