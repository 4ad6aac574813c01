"""The registry: the one source of truth about nodes, leases, inventories and events.

SQLite in WAL mode, one file in the state directory. Every service (DHCP, TFTP, HTTP, the
CLI) reads and writes node facts only through :class:`Registry`, so a PostgreSQL backend
can later replace this module's SQL without touching callers. One connection guarded by a
lock: the services run in threads (TFTP) and an event loop (DHCP, HTTP), and SQLite
serialises writers anyway.

The file (and SQLite's -wal and -shm beside it, which take its mode) is 0600, in a folder
made 0700: it holds inventories, host keys and the hashes of live boot tokens. Opening a
file for writing upgrades it in place (:mod:`provisioner.registry_migrate`); a file from a
newer provisioner is refused untouched. ``readonly=True`` (the CLI's reading commands)
never writes: a ``mode=ro`` URI, ``immutable`` when no -wal file says a writer is at work
(so a read-only folder works and no -wal/-shm is left behind), and a file that needs an
upgrade is refused with what to run. :func:`snapshot` copies a live file with SQLite's
online backup API (``provisioner backup``).
"""

from __future__ import annotations

import logging
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from provisioner import names, registry_pg
from provisioner.errors import RegistryConflict, RegistryError
from provisioner.records import (
    Event,
    EventKind,
    Node,
    Sighting,
)
from provisioner.registry_events import EventTable
from provisioner.registry_inventories import InventoryTable
from provisioner.registry_leases import LeaseTable
from provisioner.registry_leases import declined_owner as declined_owner
from provisioner.registry_migrate import (
    PRIVATE_FILE,
    make_private,
    migrate,
    read_only_uri,
    refuse_newer,
    require_current,
    schema_version,
)
from provisioner.registry_pg import PgConnection
from provisioner.registry_schema import SCHEMA_VERSION as SCHEMA_VERSION
from provisioner.registry_tokens import TokenTable
from provisioner.registry_tokens import hash_token as hash_token
from provisioner.states import NodeEvent, NodeState, apply

log = logging.getLogger(__name__)


def _connect(target: str | Path) -> sqlite3.Connection:
    db = sqlite3.connect(target, uri=isinstance(target, str), check_same_thread=False,
                         isolation_level=None)  # fmt: skip
    db.execute("PRAGMA busy_timeout=5000")
    return db


def _open(path: Path, *, readonly: bool) -> sqlite3.Connection:
    if path.exists():  # a newer file is refused before anything is written (WAL mode is)
        db = _connect(read_only_uri(path))
        try:
            (require_current if readonly else refuse_newer)(path, schema_version(db))
        except BaseException:
            db.close()
            raise
        if readonly:
            db.execute("PRAGMA query_only=ON")
            return db
        db.close()
    elif readonly:  # nothing recorded yet: an empty registry, in memory
        db = _connect(":memory:")
        migrate(db, path)
        db.execute("PRAGMA query_only=ON")
        return db
    make_private(path)
    db = _connect(path)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=NORMAL")
    migrate(db, path)
    return db


def _open_pg(url: str, *, readonly: bool) -> PgConnection:
    """A PostgreSQL registry, brought up to date as a file is (the same migrations)."""
    db = PgConnection(url, readonly=readonly)
    where = registry_pg.redact(url)
    try:
        if readonly:
            require_current(where, schema_version(db))
        else:
            migrate(db, where)
    except BaseException:
        db.close()
        raise
    return db


# A node seen: created at first sight (state new), else its last_seen moved on; and what
# each kind of sighting does to its firmware (none said, reported, a guess: iPXE's requests
# say less about the machine than its firmware's did).
_SEEN = (
    "INSERT INTO nodes(mac, state, first_seen, last_seen, firmware, arch) VALUES (?, ?, ?, ?, ?, ?)"
    " ON CONFLICT(mac) DO UPDATE SET last_seen = CASE WHEN excluded.last_seen > nodes.last_seen"
    " THEN excluded.last_seen ELSE nodes.last_seen END, first_seen = CASE WHEN"
    " excluded.first_seen < nodes.first_seen THEN excluded.first_seen ELSE nodes.first_seen END"
)
_SEEN_FIRMWARE: dict[bool | None, str] = {
    None: "",
    False: ", firmware = excluded.firmware, arch = excluded.arch",
    True: ", firmware = coalesce(nodes.firmware, excluded.firmware),"
    " arch = CASE WHEN nodes.firmware IS NULL THEN excluded.arch ELSE nodes.arch END",
}


class Registry(LeaseTable, TokenTable, InventoryTable, EventTable):
    def __init__(self, path: Path | str, *, readonly: bool = False):
        """``path``: the SQLite file, or a ``postgresql://`` URL (registry_pg.py)."""
        self.path = path
        self.where = registry_pg.redact(path) if isinstance(path, str) else str(path)
        self.readonly = readonly
        if registry_pg.is_url(path):
            self._db: Any = _open_pg(str(path), readonly=readonly)
        else:
            try:
                self._db = _open(Path(path), readonly=readonly)
            except sqlite3.Error as exc:
                raise RegistryError(f"cannot open registry {path}: {exc}") from exc
            self._db.row_factory = sqlite3.Row
        self._lock = threading.RLock()
        self._depth = 0
        self.on_event: Callable[[Event], None] | None = None  # each event recorded (metrics)

    def _clock(self) -> float:
        return time.time()

    def close(self) -> None:
        with self._lock:
            self._db.close()

    @contextmanager
    def _tx(self) -> Iterator[Any]:
        if self.readonly:
            raise RegistryError(f"registry {self.where} is open read-only")
        with self._lock:
            if self._depth:  # inside batch(): one transaction for all
                yield self._db
                return
            self._depth += 1
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            finally:
                self._depth -= 1
            try:
                self._db.execute("COMMIT")
            except BaseException:
                # SQLITE_FULL or an I/O error at COMMIT may leave the transaction open:
                # end it, or every later BEGIN fails and the service never recovers.
                if self._db.in_transaction:
                    self._db.execute("ROLLBACK")
                raise

    @contextmanager
    def batch(self) -> Iterator[None]:
        """Run several registry calls as one transaction (all or nothing)."""
        with self._tx():
            yield

    def query(self, sql: str, args: Sequence[object] = ()) -> list[dict[str, Any]]:
        """Rows of a read, for a store whose SQL is kept in its own module (the gateway's
        keys and usage: gateway/source.py; the dashboard's table: web/board.py). A failed
        read (a locked or damaged file) is :class:`RegistryError`."""
        try:
            with self._lock:
                return [dict(r) for r in self._db.execute(sql, args).fetchall()]
        except sqlite3.Error as exc:
            raise RegistryError(f"registry {self.where}: {exc}") from exc

    def execute(self, sql: str, rows: Sequence[Sequence[object]]) -> int:
        """One statement for each of ``rows``, in one transaction; the rows changed. A
        UNIQUE or PRIMARY KEY clash is :class:`RegistryConflict` (nothing is changed)."""
        try:
            with self._tx() as db:
                return sum(db.execute(sql, row).rowcount for row in rows)
        except sqlite3.IntegrityError as exc:
            raise RegistryConflict(str(exc)) from exc  # PostgreSQL's: raised as this already

    def last_step_output(self, mac: str, step: str) -> str | None:
        """The output of a node's newest step of that name (the last smoke's figures)."""
        with self._lock:
            row = self._db.execute(
                "SELECT output FROM steps WHERE mac = ? AND step = ? ORDER BY id DESC LIMIT 1",
                (mac, step),
            ).fetchone()
        return None if row is None else str(row["output"])

    # ------------------------------------------------------------------ nodes

    def touch_node(
        self,
        mac: str,
        *,
        ip: str | None = None,
        firmware: str | None = None,
        arch: int | None = None,
        firmware_is_guess: bool = False,
        dhcp_ip: str | None = None,
        now: float | None = None,
    ) -> Node:
        """Create the node at first sight (state new) or refresh what we saw of it.

        ``ip``: for the operator and tests; the services set a node's address only from a
        bound lease (:meth:`commit_lease`) or a token-checked report (:meth:`set_ip`).
        ``firmware_is_guess``: only fill the firmware in if none is known yet (iPXE's own
        DHCP requests say less about the machine than its firmware's did).
        ``dhcp_ip``: proxy mode, the address its PXE DHCP request named (see
        :meth:`dhcp_address`).
        """
        now = time.time() if now is None else now
        with self._tx() as db:
            self.seen_many([Sighting(mac, now, firmware, arch, firmware_is_guess, dhcp_ip)])
            if ip is not None:
                db.execute("UPDATE nodes SET ip = ? WHERE mac = ?", (ip, mac))
        node = self.node(mac)
        assert node is not None
        return node

    def seen_many(self, sightings: Sequence[Sighting]) -> None:
        """Record nodes seen (DHCP's batch: one a packet): one statement sent for each
        kind of sighting, not one per sighting, with the result of recording them one by
        one in order: reported firmware is written before guesses, which fill in only
        what is still unknown, ``first_seen`` is the earliest and ``last_seen`` the newest."""
        groups: dict[bool | None, list[tuple[object, ...]]] = {}
        for s in sightings:
            reported = None if s.firmware is None else s.firmware_is_guess
            arch = None if s.firmware is None else s.arch
            groups.setdefault(reported, []).append(
                (s.mac, NodeState.NEW.value, s.now, s.now, s.firmware, arch)
            )
        named = [(s.dhcp_ip, s.mac) for s in sightings if s.dhcp_ip is not None]
        with self._tx() as db:
            for reported in (None, False, True):
                if rows := groups.get(reported):
                    db.executemany(_SEEN + _SEEN_FIRMWARE[reported], rows)
            if named:
                db.executemany("UPDATE nodes SET dhcp_ip = ? WHERE mac = ?", named)

    def node(self, key: str) -> Node | None:
        """A node by MAC or by hostname."""
        with self._lock:
            row = self._db.execute(
                "SELECT * FROM nodes WHERE mac = ? OR hostname = ?", (key, key)
            ).fetchone()
        return _node(row) if row else None

    def set_ip(self, mac: str, ip: str) -> None:
        """The node's address, from its token-checked report (proxy mode)."""
        with self._tx() as db:
            db.execute("UPDATE nodes SET ip = ? WHERE mac = ?", (ip, mac))

    def dhcp_address(self, mac: str) -> str | None:
        """Proxy mode: the address the node's last PXE DHCP request named. Anyone can send
        such a packet: it only says who may fetch the node's boot token, never its ip."""
        with self._lock:
            row = self._db.execute("SELECT dhcp_ip FROM nodes WHERE mac = ?", (mac,)).fetchone()
        return str(row["dhcp_ip"]) if row and row["dhcp_ip"] else None

    def node_by_ip(self, ip: str) -> Node | None:
        """The node at ``ip``, to put what came from there on its timeline: the one whose
        address it is, else one whose PXE DHCP request named it (proxy mode, before the
        node's report gave its address). Never to decide anything else."""
        with self._lock:
            row = self._db.execute(
                "SELECT * FROM nodes WHERE ip = ? ORDER BY last_seen DESC LIMIT 1", (ip,)
            ).fetchone()
            if row is None:
                row = self._db.execute(
                    "SELECT * FROM nodes WHERE dhcp_ip = ? AND ip IS NULL"
                    " ORDER BY last_seen DESC LIMIT 1",
                    (ip,),
                ).fetchone()
        return _node(row) if row else None

    def nodes(self) -> list[Node]:
        with self._lock:
            rows = self._db.execute("SELECT * FROM nodes ORDER BY first_seen, mac").fetchall()
        return [_node(r) for r in rows]

    def set_hostname(self, mac: str, hostname: str | None) -> Node:
        """Name a node (an RFC 1123 hostname: it reaches units and shell lines; UnsafeValue
        otherwise), or take its name away."""
        if hostname is not None:
            names.check_hostname(hostname)
        try:
            with self._tx() as db:
                db.execute("UPDATE nodes SET hostname = ? WHERE mac = ?", (hostname, mac))
        except (sqlite3.IntegrityError, RegistryConflict) as exc:
            raise RegistryError(f"hostname {hostname!r} is taken by another node") from exc
        return self._require(mac)

    def set_profile(self, mac: str, profile: str | None) -> Node:
        with self._tx() as db:
            db.execute("UPDATE nodes SET profile = ? WHERE mac = ?", (profile, mac))
        return self._require(mac)

    def assign_hostname(self, mac: str, pattern: str) -> Node:
        """Give the node the first free name of ``pattern`` ("node{n}": node0, node1, ...)."""
        with self._tx() as db:
            row = db.execute("SELECT hostname FROM nodes WHERE mac = ?", (mac,)).fetchone()
            if row is None:
                raise RegistryError(f"no node with MAC {mac}")
            if row["hostname"] is None:
                taken = {r[0] for r in db.execute("SELECT hostname FROM nodes") if r[0]}
                n = 0
                while pattern.format(n=n) in taken:
                    n += 1
                db.execute(
                    "UPDATE nodes SET hostname = ? WHERE mac = ?", (pattern.format(n=n), mac)
                )
        return self._require(mac)

    def set_booted_image(self, mac: str, ref: str | None) -> None:
        """Remember the image (name@version) that the node's boot script just named."""
        with self._tx() as db:
            db.execute("UPDATE nodes SET image = ? WHERE mac = ?", (ref, mac))

    # ------------------------------------------------------------------ profile images

    def set_profile_image(
        self, profile: str, image: str | None, *, previous: str | None = None
    ) -> None:
        """The image ``profile``'s nodes boot (``name`` or ``name@version``); None: default.

        The image it replaces is kept as the profile's ``previous`` (what ``image use
        --rollback`` returns to); ``previous`` names it instead when the caller knows
        better (a roll that resolved the profile's default to a version)."""
        with self._tx() as db:
            row = db.execute(
                "SELECT image FROM profile_images WHERE profile = ?", (profile,)
            ).fetchone()
            before = previous or (row["image"] if row else None)
            if row is not None and before == image:  # the same again: keep the one before
                before = db.execute(
                    "SELECT previous FROM profile_images WHERE profile = ?", (profile,)
                ).fetchone()["previous"]
            if image is None:
                db.execute("DELETE FROM profile_images WHERE profile = ?", (profile,))
            else:
                db.execute(
                    "INSERT INTO profile_images(profile, image, updated, previous)"
                    " VALUES (?, ?, ?, ?) ON CONFLICT(profile) DO UPDATE SET"
                    " image = excluded.image, updated = excluded.updated,"
                    " previous = excluded.previous",
                    (profile, image, time.time(), before if before != image else None),
                )

    def profile_images(self) -> dict[str, str]:
        with self._lock:
            rows = self._db.execute("SELECT profile, image FROM profile_images").fetchall()
        return {r["profile"]: r["image"] for r in rows}

    def previous_profile_image(self, profile: str) -> str | None:
        """The image ``profile`` booted before its last ``image use`` (None: not known)."""
        with self._lock:
            row = self._db.execute(
                "SELECT previous FROM profile_images WHERE profile = ?", (profile,)
            ).fetchone()
        return str(row["previous"]) if row and row["previous"] else None

    # ------------------------------------------------------------------ node image pins

    def pin_image(self, mac: str, image: str | None) -> None:
        """Boot ``mac`` from ``image`` (name@version) whatever its profile's image is, until
        unpinned (None): how a rolling upgrade moves one node at a time."""
        self._set_node_row("node_images", "image", "updated", mac, image)

    def set_cache_disk(self, mac: str, device: str | None) -> None:
        """The disk ``node disk init`` made the node's cache (None: it has none)."""
        self._set_node_row("node_disks", "device", "formatted", mac, device)

    def _set_node_row(
        self, table: str, column: str, stamp: str, mac: str, value: str | None
    ) -> None:
        """One value per node in ``table`` (its key: mac), with the time it was set in
        ``stamp``; None deletes the row. Names are this module's constants, never input."""
        with self._tx() as db:
            if value is None:
                db.execute(f"DELETE FROM {table} WHERE mac = ?", (mac,))
            elif db.execute("SELECT 1 FROM nodes WHERE mac = ?", (mac,)).fetchone() is None:
                raise RegistryError(f"no node with MAC {mac}")
            else:
                db.execute(
                    f"INSERT INTO {table}(mac, {column}, {stamp}) VALUES (?, ?, ?)"
                    f" ON CONFLICT(mac) DO UPDATE SET {column} = excluded.{column},"
                    f" {stamp} = excluded.{stamp}",
                    (mac, value, time.time()),
                )

    def cache_disk(self, mac: str) -> str | None:
        with self._lock:
            row = self._db.execute("SELECT device FROM node_disks WHERE mac = ?", (mac,)).fetchone()
        return str(row["device"]) if row else None

    def image_pins(self) -> dict[str, str]:
        """MAC -> the image it is pinned to (only the pinned nodes)."""
        with self._lock:
            rows = self._db.execute("SELECT mac, image FROM node_images").fetchall()
        return {r["mac"]: r["image"] for r in rows}

    # ------------------------------------------------------------------ clusters

    def save_cluster(self, name: str, spec: str) -> None:
        with self._tx() as db:
            db.execute(
                "INSERT INTO clusters(name, spec, updated) VALUES (?, ?, ?)"
                " ON CONFLICT(name) DO UPDATE SET spec = excluded.spec, updated = excluded.updated",
                (name, spec, time.time()),
            )

    def cluster_spec(self, name: str) -> str | None:
        with self._lock:
            row = self._db.execute("SELECT spec FROM clusters WHERE name = ?", (name,)).fetchone()
        return row["spec"] if row else None

    def cluster_names(self) -> list[str]:
        with self._lock:
            rows = self._db.execute("SELECT name FROM clusters ORDER BY name").fetchall()
        return [r["name"] for r in rows]

    def delete_cluster(self, name: str) -> None:
        with self._tx() as db:
            db.execute("DELETE FROM clusters WHERE name = ?", (name,))

    # ------------------------------------------------------------------ steps run on nodes

    def add_step(
        self,
        run: str,
        mac: str,
        step: str,
        status: str,
        exit_status: int | None,
        output: str,
        seconds: float,
    ) -> None:
        """One post-install (or smoke) step's outcome on a node."""
        with self._tx() as db:
            db.execute(
                "INSERT INTO steps(run, mac, step, status, exit_status, output, seconds, ts)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (run, mac, step, status, exit_status, output, seconds, time.time()),
            )

    def steps(self, mac: str, *, run: str | None = None) -> list[dict[str, object]]:
        """A node's step outcomes, oldest first (those of one run, if given)."""
        query = "SELECT * FROM steps WHERE mac = ?" + (" AND run = ?" if run else "")
        args = (mac, run) if run else (mac,)
        with self._lock:
            rows = self._db.execute(query + " ORDER BY id", args).fetchall()
        return [dict(r) for r in rows]

    def generation(self, key: str) -> str | None:
        """A value every process sharing the registry can watch (``bump``), e.g.
        ``profiles``: a serve that reloaded its profiles tells the others."""
        with self._lock:
            row = self._db.execute(
                "SELECT value FROM meta WHERE key = ?", (f"gen:{key}",)
            ).fetchone()
        return str(row["value"]) if row else None

    def bump(self, key: str) -> str:
        """A new value for ``generation(key)``; returned, so its writer knows its own."""
        value = f"{time.time():.6f}-{os.getpid()}"
        with self._tx() as db:
            db.execute(
                "INSERT INTO meta(key, value) VALUES (?, ?)"
                " ON CONFLICT(key) DO UPDATE SET value = excluded.value",
                (f"gen:{key}", value),
            )
        return value

    def macs_with_inventory(self) -> list[str]:
        with self._lock:
            rows = self._db.execute("SELECT mac FROM inventories ORDER BY mac").fetchall()
        return [r["mac"] for r in rows]

    def transition(self, mac: str, event: NodeEvent, *, reason: str | None = None) -> Node:
        """Apply a state-machine event; IllegalTransition leaves the node unchanged."""
        with self._tx() as db:
            row = db.execute("SELECT state FROM nodes WHERE mac = ?", (mac,)).fetchone()
            if row is None:
                raise RegistryError(f"no node with MAC {mac}")
            old = NodeState(row["state"])
            new = apply(old, event)
            if new is not old:
                db.execute("UPDATE nodes SET state = ? WHERE mac = ?", (new.value, mac))
                self.add_event(mac, EventKind.STATE, {"from": old, "to": new, "why": reason})
        return self._require(mac)

    def forget(self, mac: str) -> None:
        with self._tx() as db:
            db.execute("DELETE FROM nodes WHERE mac = ?", (mac,))
            db.execute("DELETE FROM inventories WHERE mac = ?", (mac,))
            db.execute("DELETE FROM power WHERE mac = ?", (mac,))
            db.execute("DELETE FROM node_images WHERE mac = ?", (mac,))
            db.execute("DELETE FROM node_disks WHERE mac = ?", (mac,))
            db.execute("DELETE FROM events WHERE mac = ?", (mac,))
            db.execute("DELETE FROM leases WHERE mac = ? AND kind != ?", (mac, "declined"))
            db.execute("DELETE FROM boot_tokens WHERE mac = ?", (mac,))
            db.execute("DELETE FROM pending_inventories WHERE mac = ?", (mac,))

    def _require(self, mac: str) -> Node:
        node = self.node(mac)
        if node is None:
            raise RegistryError(f"no node with MAC {mac}")
        return node

    # ---- power settings (provisioner/power): one URL per node, never a password

    def set_power(self, mac: str, url: str | None) -> None:
        """Store the node's power URL (None: forget it); a URL with a password is refused."""
        from urllib.parse import urlsplit

        if url is not None and "://" in url and urlsplit(url).password is not None:
            raise RegistryError("a power URL with a password is refused: use credentials")
        self._set_node_row("power", "url", "updated", mac, url)

    def power(self, mac: str) -> str | None:
        """The node's power URL, or None when it has none."""
        with self._lock:
            row = self._db.execute("SELECT url FROM power WHERE mac = ?", (mac,)).fetchone()
        return str(row["url"]) if row else None

    # ---- end of power settings


def snapshot(path: Path, dest: Path) -> int:
    """Copy the registry at ``path`` into a new file ``dest`` (0600) with SQLite's online
    backup API (one consistent state even while ``serve`` writes), then check the copy
    (``PRAGMA integrity_check``). Its schema version; one newer than this provisioner
    knows is refused. ``provisioner backup`` copies the live file, restore the unpacked."""
    if not path.is_file():
        raise RegistryError(f"no registry at {path}")
    os.close(os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_EXCL, PRIVATE_FILE))
    try:
        source = _connect(read_only_uri(path))
        try:
            refuse_newer(path, schema_version(source))
            copy = sqlite3.connect(dest)
            try:
                source.backup(copy)
                verdict = copy.execute("PRAGMA integrity_check").fetchone()[0]
                version = schema_version(copy)
            finally:
                copy.close()
        finally:
            source.close()
    except sqlite3.Error as exc:
        raise RegistryError(f"cannot copy registry {path}: {exc}") from exc
    if verdict != "ok":
        raise RegistryError(f"registry {path} fails SQLite's integrity check: {verdict}")
    return version


def _node(row: sqlite3.Row) -> Node:
    return Node(
        mac=row["mac"],
        hostname=row["hostname"],
        state=NodeState(row["state"]),
        profile=row["profile"],
        ip=row["ip"],
        firmware=row["firmware"],
        arch=row["arch"],
        first_seen=row["first_seen"],
        last_seen=row["last_seen"],
        image=row["image"],
    )
