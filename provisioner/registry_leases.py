"""The registry's DHCP leases: offered, bound and declined addresses (full mode).

A part of :class:`provisioner.registry.Registry` (its base class), kept apart by concern;
it uses the registry's connection, lock and transactions and imports no SQLite itself.
"""

from __future__ import annotations

import time
from ipaddress import IPv4Address

from provisioner.records import EventKind, Lease, LeaseKind
from provisioner.registry_part import RegistryPart


def declined_owner(mac: str) -> str:
    """The owner recorded for an address ``mac`` declined: nobody can renew it."""
    return f"declined-by-{mac}"


class LeaseTable(RegistryPart):
    def active_leases(self, now: float | None = None) -> dict[IPv4Address, str]:
        """Every address held (offered, bound or declined) and not expired: ip -> mac."""
        now = time.time() if now is None else now
        with self._lock:
            rows = self._db.execute(
                "SELECT ip, mac FROM leases WHERE expires > ?", (now,)
            ).fetchall()
        return {IPv4Address(r["ip"]): r["mac"] for r in rows}

    def bound_address(self, mac: str, now: float | None = None) -> str | None:
        """The address of the node's unexpired bound lease (full mode), if any."""
        now = time.time() if now is None else now
        with self._lock:
            row = self._db.execute(
                "SELECT ip FROM leases WHERE mac = ? AND kind = ? AND expires > ?",
                (mac, LeaseKind.BOUND.value, now),
            ).fetchone()
        return str(row["ip"]) if row else None

    def has_dhcp(self, mac: str) -> bool:
        """Did ``mac`` network-boot through us: a lease, or a DHCP event on its timeline?"""
        with self._lock:
            row = self._db.execute(
                "SELECT 1 FROM leases WHERE mac = ?"
                " UNION ALL SELECT 1 FROM events WHERE mac = ? AND kind = ? LIMIT 1",
                (mac, mac, EventKind.DHCP.value),
            ).fetchone()
        return row is not None

    def leases(self) -> list[Lease]:
        with self._lock:
            rows = self._db.execute("SELECT * FROM leases ORDER BY ip").fetchall()
        return [
            Lease(IPv4Address(r["ip"]), r["mac"], r["expires"], LeaseKind(r["kind"])) for r in rows
        ]

    def commit_lease(
        self,
        mac: str,
        ip: IPv4Address,
        expires: float,
        kind: LeaseKind,
        *,
        now: float | None = None,
    ) -> bool:
        """Hold ``ip`` for ``mac``; one address per MAC (an older one is let go). False,
        and nothing changed, when another MAC holds ``ip`` unexpired: a second ``serve``
        sharing this registry gave it first (the caller must not hand it out)."""
        now = time.time() if now is None else now
        with self._tx() as db:
            taken = db.execute(
                "INSERT INTO leases(ip, mac, expires, kind) VALUES (?, ?, ?, ?)"
                " ON CONFLICT(ip) DO UPDATE SET mac = excluded.mac, expires = excluded.expires,"
                " kind = excluded.kind WHERE leases.mac = excluded.mac OR leases.expires <= ?",
                (str(ip), mac, expires, kind.value, now),
            ).rowcount
            if not taken:
                return False
            db.execute("DELETE FROM leases WHERE mac = ? AND ip != ? AND kind != ?",
                       (mac, str(ip), "declined"))  # fmt: skip
            if kind is LeaseKind.BOUND:
                db.execute("UPDATE nodes SET ip = ? WHERE mac = ?", (str(ip), mac))
        return True

    def lease_of(self, ip: IPv4Address) -> Lease | None:
        """Who holds ``ip`` now, as the registry says (another ``serve`` may have given it)."""
        with self._lock:
            r = self._db.execute("SELECT * FROM leases WHERE ip = ?", (str(ip),)).fetchone()
        return (
            Lease(IPv4Address(r["ip"]), r["mac"], r["expires"], LeaseKind(r["kind"])) if r else None
        )

    def release_lease(self, mac: str) -> None:
        with self._tx() as db:
            db.execute("DELETE FROM leases WHERE mac = ? AND kind != ?", (mac, "declined"))

    def decline(self, ip: IPv4Address, mac: str, until: float) -> None:
        """An address a client found in use: keep it out of the pool until ``until``
        (whoever held it: the address is in use by something we do not know)."""
        with self._tx() as db:
            db.execute(
                "INSERT INTO leases(ip, mac, expires, kind) VALUES (?, ?, ?, ?)"
                " ON CONFLICT(ip) DO UPDATE SET mac = excluded.mac, expires = excluded.expires,"
                " kind = excluded.kind",
                (str(ip), declined_owner(mac), until, LeaseKind.DECLINED.value),
            )
