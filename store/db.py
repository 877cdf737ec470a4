"""Connections to the app database: resolves the embedded default and prepares pooled connections."""

from __future__ import annotations

from pathlib import Path

import asyncpg

from config import Settings

# Session-local staging table for bulk page writes (DESIGN rule 3). Temp tables are not WAL-logged,
# and EXTERNAL storage skips pglz, so staging costs a memory copy, not a second compressed write.
_STAGE_DDL = """
CREATE TEMP TABLE IF NOT EXISTS page_stage (
    sha256 bytea, header_sha256 bytea, size integer, uid bigint, flags text[], internaldate timestamptz,
    message_id text, in_reply_to text, refs text[], subject text, from_addr text, from_name text,
    to_addrs text[], cc_addrs text[], bcc_addrs text[], sent_at timestamptz, snippet text,
    parse_error text
) ON COMMIT DELETE ROWS;
"""
STAGE_COLUMNS = (
    "sha256", "header_sha256", "size", "uid", "flags", "internaldate", "message_id", "in_reply_to", "refs",
    "subject", "from_addr", "from_name", "to_addrs", "cc_addrs", "bcc_addrs", "sent_at", "snippet",
    "parse_error",
)


class DatabaseUnavailable(RuntimeError):
    pass


def embedded_pgdata(settings: Settings) -> Path:
    return settings.state_dir / "pgdata"


def resolve_database_url(settings: Settings) -> str:
    """DATABASE_URL if set, else the embedded pgserver under the state dir (left running for reuse)."""
    if settings.database_url:
        return settings.database_url
    import logging
    import warnings

    # pgserver's platformdirs import warns about XDG_RUNTIME_DIR on every CLI call; it is harmless.
    warnings.filterwarnings("ignore", message=".*XDG_RUNTIME_DIR.*")
    logging.getLogger("pgserver").setLevel(logging.WARNING)
    import pgserver  # only needed for the embedded default

    settings.state_dir.mkdir(parents=True, exist_ok=True)
    server = pgserver.get_server(embedded_pgdata(settings), cleanup_mode=None)
    return server.get_uri()


async def _init_connection(conn: asyncpg.Connection) -> None:
    await conn.execute(_STAGE_DDL)


async def create_pool(dsn: str, *, size: int = 8) -> asyncpg.Pool:
    try:
        pool = await asyncpg.create_pool(
            dsn, min_size=1, max_size=size, init=_init_connection, command_timeout=300
        )
    except (OSError, asyncpg.PostgresError) as exc:
        raise DatabaseUnavailable(f"cannot connect to PostgreSQL: {exc}") from exc
    assert pool is not None
    return pool
