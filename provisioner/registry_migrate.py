"""The registry file on disk: its modes, its read-only URI, its schema version (``PRAGMA
user_version``) and the steps that raise it.

:mod:`provisioner.registry` opens the file and hands the connection here; this module
never imports sqlite3 (it talks to anything with ``execute``), so the rules are in one
short place:

- the file (and SQLite's -wal and -shm, which take its mode) is 0600 in a 0700 folder
  (:func:`make_private`);
- a read-only open uses ``mode=ro``, and ``immutable`` when no -wal file exists (no
  connection has the file open in WAL mode: nothing to coordinate with, and nothing is
  created, so a read-only folder works) (:func:`read_only_uri`);

- a file newer than :data:`~provisioner.registry_schema.SCHEMA_VERSION` is refused before
  anything is written (:func:`refuse_newer`);
- a read-only open needs a file that is up to date (:func:`require_current`): only a
  command that writes upgrades a file;
- :func:`migrate` applies the steps a file lacks, each in its own ``BEGIN IMMEDIATE``
  transaction that re-reads the version first (two processes opening an old file at once
  apply each step once) and ends with ``PRAGMA user_version = N``.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

from provisioner.errors import RegistryError, SchemaVersionError
from provisioner.registry_schema import MIGRATIONS, SCHEMA_VERSION, Migration

log = logging.getLogger(__name__)

PRIVATE_FILE = 0o600
PRIVATE_DIR = 0o700


def make_private(path: Path) -> None:
    """Create the database file 0600 (SQLite gives its -wal and -shm the same mode), or
    make an existing one and its companions 0600."""
    path.parent.mkdir(mode=PRIVATE_DIR, parents=True, exist_ok=True)
    try:
        os.close(os.open(path, os.O_RDWR | os.O_CREAT, PRIVATE_FILE))
        for file in (path, path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm")):
            if file.exists() and file.stat().st_mode & 0o777 != PRIVATE_FILE:
                file.chmod(PRIVATE_FILE)
    except OSError as exc:
        raise RegistryError(f"cannot open registry {path}: {exc.strerror}") from exc


def read_only_uri(path: Path) -> str:
    """The ``file:`` URI that opens ``path`` read-only (see the module's docstring). For
    short reads (a command, a backup): an immutable connection does not see a writer that
    starts after it opened."""
    wal = path.with_name(path.name + "-wal")
    return path.resolve().as_uri() + ("?mode=ro" if wal.exists() else "?mode=ro&immutable=1")


class _Cursor(Protocol):
    def fetchone(self) -> Any: ...

    def fetchall(self) -> list[Any]: ...


class Database(Protocol):
    """What the steps need of a connection (sqlite3's, in autocommit mode)."""

    def execute(self, sql: str, /) -> _Cursor: ...

    @property
    def in_transaction(self) -> bool: ...


def schema_version(db: Database) -> int:
    return int(db.execute("PRAGMA user_version").fetchone()[0])


def refuse_newer(path: Path | str, version: int, known: int = SCHEMA_VERSION) -> None:
    if version > known:
        raise SchemaVersionError(
            path, version, known,
            f"{path} has schema version {version}, this provisioner knows up to {known}:"
            " upgrade provisioner",
        )  # fmt: skip


def require_current(path: Path | str, version: int, known: int = SCHEMA_VERSION) -> None:
    """A read-only open: refuse a file that is newer, or older (it would need writing)."""
    refuse_newer(path, version, known)
    if version < known:
        raise SchemaVersionError(
            path, version, known,
            f"{path} has schema version {version}, this provisioner needs {known}: run a"
            " command that writes, or `provisioner serve`, to upgrade it",
        )  # fmt: skip


def statements(script: str) -> list[str]:
    """The script's statements: one ends with a line whose code (before ``--``) ends in
    ``;``. (sqlite3's executescript would commit the step's transaction first.)"""
    found, lines = [], []
    for line in script.splitlines():
        lines.append(line)
        if line.split("--", 1)[0].rstrip().endswith(";"):
            found.append("\n".join(lines).strip())
            lines = []
    if any(line.split("--", 1)[0].strip() for line in lines):
        raise ValueError(f"a statement without its ';': {' '.join(lines)[:60]!r}")
    return found


def migrate(db: Database, path: Path | str, steps: Sequence[Migration] = MIGRATIONS) -> list[int]:
    """Apply the steps newer than the file, in order; the versions applied."""
    known = steps[-1].version if steps else 0
    refuse_newer(path, schema_version(db), known)
    new = db.execute("SELECT count(*) FROM sqlite_master").fetchone()[0] == 0
    applied = []
    for step in steps:
        if schema_version(db) < step.version and _apply(db, step):
            level = logging.DEBUG if new else logging.INFO  # an upgrade is news; a new file not
            log.log(level, "registry %s: schema version %d (%s)", path, step.version, step.why)
            applied.append(step.version)
    return applied


def _apply(db: Database, step: Migration) -> bool:
    """One step in one transaction; False if another process applied it first."""
    db.execute("BEGIN IMMEDIATE")
    try:
        if schema_version(db) >= step.version:
            db.execute("ROLLBACK")
            return False
        for statement in statements(step.script):
            db.execute(statement)
        for table, column, declaration in step.columns:
            have = {row[1] for row in db.execute(f"PRAGMA table_info({table})").fetchall()}
            if column not in have:
                db.execute(f"ALTER TABLE {table} ADD COLUMN {column} {declaration}")
        if db.execute("SELECT 1 FROM sqlite_master WHERE name = 'meta'").fetchone():
            db.execute(
                f"INSERT INTO meta(key, value) VALUES ('schema', '{step.version:d}')"
                " ON CONFLICT(key) DO UPDATE SET value = excluded.value"
            )
        db.execute(f"PRAGMA user_version = {step.version:d}")
        db.execute("COMMIT")
    except BaseException:
        if db.in_transaction:
            db.execute("ROLLBACK")
        raise
    return True
