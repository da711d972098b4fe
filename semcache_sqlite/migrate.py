"""Bring a cache file's schema up to date, forward only, by ``PRAGMA user_version``.

The numbered files in ``migrations/`` (``0001_init.sql``, ``0002_...``) ship in
the wheel as the package ``semcache_sqlite.migrations``. ``user_version = N``
means files 1..N are applied. Each file is applied, and ``user_version`` plus a
``schema_migrations`` row recorded, in ONE ``BEGIN IMMEDIATE`` transaction, so
a crash or an error leaves the file at the previous version, never half-way.
Statements are executed one by one (never ``executescript()``, which commits).

A file whose ``user_version`` is above the newest known migration was written by
a newer semcache-sqlite and is refused. A SQLite file that carries another
program's tables (or application_id) is refused too, so we never write into it:
``check_openable`` is the ``check_file`` a Database runs before it sets the file up.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime, timezone
from importlib import resources
from pathlib import Path
from typing import Any

from .db import Database, split_sql_script
from .errors import MigrationError, NotACacheFileError, ReadOnlyError, SchemaTooNewError

#: ``PRAGMA application_id`` of every semcache-sqlite file ("SEMC" in ASCII).
APPLICATION_ID = 0x53454D43

_FILE_NAME = re.compile(r"^(\d{4})_([A-Za-z0-9_]+)\.sql$")


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    sql: str


def _migration_files() -> list[tuple[str, str]]:
    """(file name, text) of every migration, from the installed package.

    When the code runs from a source checkout without being installed (e.g.
    ``python -m pytest`` from the repo root), the package directory has no
    ``migrations`` subpackage, so fall back to the repository's ``migrations/``.
    """
    try:
        root = resources.files("semcache_sqlite.migrations")
        return [(f.name, f.read_text("utf-8")) for f in root.iterdir() if f.name.endswith(".sql")]
    except ModuleNotFoundError:
        source_dir = Path(__file__).resolve().parent.parent / "migrations"
        return [(p.name, p.read_text("utf-8")) for p in source_dir.glob("*.sql")]


def available_migrations() -> list[Migration]:
    migrations = []
    for file_name, text in _migration_files():
        match = _FILE_NAME.match(file_name)
        if not match:
            raise MigrationError(f"badly named migration file {file_name!r} (want NNNN_name.sql)")
        migrations.append(Migration(int(match.group(1)), match.group(2), text))
    migrations.sort(key=lambda m: m.version)
    versions = [m.version for m in migrations]
    if versions != list(range(1, len(versions) + 1)):
        raise MigrationError(f"migrations must be numbered 1..N without gaps, found {versions}")
    return migrations


def latest_version() -> int:
    return len(available_migrations())


def schema_version(conn: Any) -> int:
    return int(conn.execute("PRAGMA user_version").fetchone()[0])


def check_file_identity(conn: Any, path: str) -> None:
    """Refuse SQLite files that belong to another program (never write into them)."""
    app_id = int(conn.execute("PRAGMA application_id").fetchone()[0])
    if app_id not in (0, APPLICATION_ID):
        raise NotACacheFileError(
            f"{path}: a SQLite file of another program (application_id {app_id:#x}), "
            "not a semcache-sqlite cache"
        )
    if app_id == 0 and schema_version(conn) == 0:
        tables = conn.execute(
            "SELECT name FROM sqlite_master WHERE type IN ('table', 'view') "
            "AND name NOT LIKE 'sqlite_%'"
        ).fetchall()
        if tables:
            names = ", ".join(sorted(str(row[0]) for row in tables)[:5])
            raise NotACacheFileError(
                f"{path}: a SQLite file with other tables ({names}), not a semcache-sqlite cache"
            )


def check_not_newer(conn: Any, path: str) -> int:
    version = schema_version(conn)
    latest = latest_version()
    if version > latest:
        raise SchemaTooNewError(
            f"{path}: schema version {version} was written by a newer semcache-sqlite; this "
            f"version understands up to {latest}. Upgrade semcache-sqlite to open it."
        )
    return version


def check_openable(conn: Any, path: str) -> int:
    """Refuse another program's file or a newer one; ``Database(check_file=...)`` runs it
    before anything (WAL mode included) changes the file. Returns the schema version."""
    check_file_identity(conn, path)
    return check_not_newer(conn, path)


def migrate(db: Database, target: int | None = None) -> int:
    """Apply every pending migration (up to ``target``); return the resulting version."""
    migrations = available_migrations()
    target = len(migrations) if target is None else target
    with db.reading() as conn:
        check_file_identity(conn, db.path)
        current = check_not_newer(conn, db.path)
    for migration in migrations:
        if migration.version <= current or migration.version > target:
            continue
        _apply(db, migration)
    with db.reading() as conn:
        return schema_version(conn)


def check_current(db: Database) -> int:
    """For a file opened read-only: refuse it unless its schema is exactly this code's."""
    with db.reading() as conn:
        check_file_identity(conn, db.path)
        version = check_not_newer(conn, db.path)
    latest = latest_version()
    if version < latest:
        what = "is not a semcache-sqlite cache yet" if version == 0 else f"is at schema {version}"
        raise ReadOnlyError(
            f"{db.path} {what} and this version needs schema {latest}; a read-only file "
            "cannot be upgraded. Open it once without read_only=True where it is writable."
        )
    return version


def _apply(db: Database, migration: Migration) -> None:
    statements = split_sql_script(migration.sql, db.driver.complete_statement)
    with db.transaction() as conn:
        # Another process may have applied it while we waited for the write lock.
        version = check_not_newer(conn, db.path)
        if version >= migration.version:
            return
        if version != migration.version - 1:
            raise MigrationError(
                f"{db.path}: at version {version}, cannot apply {migration.version}"
            )
        try:
            for statement in statements:
                conn.execute(statement)
        except db.driver.Error as exc:
            raise MigrationError(
                f"{db.path}: migration {migration.version:04d}_{migration.name} failed and was "
                f"rolled back: {exc}"
            ) from exc
        conn.execute(
            "INSERT INTO schema_migrations (version, name, applied_at) VALUES (?, ?, ?)",
            (migration.version, migration.name, datetime.now(timezone.utc).isoformat()),
        )
        conn.execute(f"PRAGMA application_id = {APPLICATION_ID}")
        conn.execute(f"PRAGMA user_version = {migration.version}")
