"""A throwaway PostgreSQL server for the registry's tests (issue 23): Debian's
``postgresql`` binaries, a data directory of its own, a Unix socket only (no TCP port),
fsync off; stopped and removed at the end of the session. Each test gets a database of its
own (``fresh_database``), so tests never see each other's rows. fsync is off unless asked
for (``durable``).

As root the server runs as the ``postgres`` user (PostgreSQL refuses root); without root
or the binaries the tests that need it are skipped (a failure under CI=true, as for every
tool scripts/setup installs).
"""

from __future__ import annotations

import itertools
import os
import pwd
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from tests.conftest import unavailable

_COUNT = itertools.count()


def binaries() -> Path | None:
    root = Path("/usr/lib/postgresql")
    found = sorted(root.glob("*/bin/initdb"), key=lambda p: int(p.parent.parent.name))
    return found[-1].parent if found else None


@contextmanager
def server(*, durable: bool = False) -> Iterator[str]:
    """Start a server; yield the URL of its ``postgres`` database (over the socket).
    ``durable``: fsync and synchronous commits on, as a site runs it (the storm bench)."""
    bindir = binaries()
    if bindir is None:
        unavailable("needs Debian's postgresql (scripts/setup installs it)")
    if os.geteuid() != 0:
        unavailable("needs root (the server runs as the postgres user)")
    try:
        user = pwd.getpwnam("postgres")
    except KeyError:
        unavailable("needs the postgres user (Debian's postgresql package makes it)")
    home = Path(tempfile.mkdtemp(prefix="provisioner-pg-"))
    data, sock = home / "data", home / "sock"
    sock.mkdir()
    os.chown(home, user.pw_uid, user.pw_gid)
    os.chown(sock, user.pw_uid, user.pw_gid)

    def as_postgres(*argv: str) -> None:
        done = subprocess.run(["runuser", "-u", "postgres", "--", *argv], capture_output=True,
                              text=True, check=False, timeout=120)  # fmt: skip
        if done.returncode != 0:
            raise RuntimeError(f"{argv[0]} failed: {done.stdout}{done.stderr}")

    try:
        as_postgres(str(bindir / "initdb"), "-D", str(data), "-A", "trust", "-U", "postgres",
                    "--no-sync", "-E", "UTF8")  # fmt: skip
        options = f"-k {sock} -c listen_addresses='' -c max_connections=200"
        if not durable:
            options += " -c fsync=off -c synchronous_commit=off"
        as_postgres(str(bindir / "pg_ctl"), "-D", str(data), "-o", options, "-w",
                    "-l", str(home / "server.log"), "start")  # fmt: skip
        try:
            yield f"postgresql:///postgres?host={sock}&user=postgres"
        finally:
            as_postgres(str(bindir / "pg_ctl"), "-D", str(data), "-m", "immediate", "-w", "stop")
    finally:
        shutil.rmtree(home, ignore_errors=True)


def fresh_database(admin_url: str) -> str:
    """A new, empty database on the server; its URL."""
    import psycopg

    name = f"registry_{os.getpid()}_{next(_COUNT)}"
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")
    return admin_url.replace("/postgres?", f"/{name}?", 1)
