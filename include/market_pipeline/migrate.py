"""Versioned SQL migrations for the pipeline's schema.

Migrations are the ``NNNN_name.sql`` files beside this module, applied in order, each in
its own transaction, and recorded (with a checksum) in ``<schema>.schema_migrations``.
They run from ``python -m market_pipeline.migrate`` or the DAG's ``migrate_schema``
path — never at DAG parse time. A changed file that was already applied is an error.
"""

from __future__ import annotations

import argparse
import hashlib
import sys
from dataclasses import dataclass
from pathlib import Path

from psycopg2 import sql

from market_pipeline.config import SCHEMA
from market_pipeline.store.sql import schema as schema_ident
from market_pipeline.store.sql import table

MIGRATIONS_DIR = Path(__file__).with_name("migrations")
# Serialises concurrent migrators (two workers starting at once).
_ADVISORY_LOCK_KEY = 0x6D61726B6574  # "market"


@dataclass(frozen=True)
class Migration:
    """One migration file: its version (the file name's stem) and its path."""

    version: str
    path: Path

    def statement(self, schema: sql.Identifier) -> sql.Composed:
        """The file's SQL with each ``{schema}`` replaced by the quoted schema identifier.

        The files keep other braces (regex quantifiers such as ``{0,9}``), so the text is
        cut at the placeholder rather than given to ``str.format``; everything between the
        placeholders is the file's own text.
        """
        parts = self.path.read_text().split("{schema}")
        pieces: list[sql.Composable] = [sql.SQL(parts[0])]
        for part in parts[1:]:
            pieces += [schema, sql.SQL(part)]
        return sql.Composed(pieces)

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.path.read_bytes()).hexdigest()


def discover() -> list[Migration]:
    """The migration files, oldest first."""
    return [Migration(p.stem, p) for p in sorted(MIGRATIONS_DIR.glob("[0-9][0-9][0-9][0-9]_*.sql"))]


def apply(conn, schema: str = SCHEMA) -> list[str]:
    """Apply pending migrations on a psycopg2 connection; return the versions applied."""
    applied: list[str] = []
    ident = schema_ident(schema)
    migrations = table("schema_migrations", schema)
    with conn, conn.cursor() as cur:
        cur.execute("SELECT pg_advisory_xact_lock(%s)", (_ADVISORY_LOCK_KEY,))
        cur.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(ident))
        cur.execute(
            sql.SQL(
                """CREATE TABLE IF NOT EXISTS {} (
                       version text PRIMARY KEY,
                       checksum text NOT NULL,
                       applied_at timestamptz NOT NULL DEFAULT now())"""
            ).format(migrations)
        )
        cur.execute(sql.SQL("SELECT version, checksum FROM {}").format(migrations))
        done = dict(cur.fetchall())
        for migration in discover():
            if migration.version in done:
                if done[migration.version] != migration.checksum:
                    raise RuntimeError(
                        f"migration {migration.version} was changed after it was applied "
                        f"(expected checksum {done[migration.version][:12]}, "
                        f"found {migration.checksum[:12]}); add a new migration instead"
                    )
                continue
            cur.execute(migration.statement(ident))
            cur.execute(
                sql.SQL("INSERT INTO {} (version, checksum) VALUES (%s, %s)").format(migrations),
                (migration.version, migration.checksum),
            )
            applied.append(migration.version)
    return applied


def main(argv: list[str] | None = None) -> int:
    import psycopg2

    from market_pipeline.connections import db_dsn

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dsn", help="libpq URI (default: from AIRFLOW_CONN_MARKET_DB)")
    parser.add_argument("--schema", default=SCHEMA)
    args = parser.parse_args(argv)
    conn = psycopg2.connect(args.dsn or db_dsn())
    try:
        versions = apply(conn, args.schema)
    finally:
        conn.close()
    print(f"applied {len(versions)} migration(s) to schema {args.schema}: {versions or 'none'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
