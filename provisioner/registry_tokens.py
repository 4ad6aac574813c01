"""The registry's per-boot tokens: a hash of the token each boot script hands its node,
where it may be used from, and whether the inventory POST spent it (docs/security.md).

A part of :class:`provisioner.registry.Registry` (its base class), kept apart by concern
as the leases are; it uses the registry's connection, lock and transactions.
"""

from __future__ import annotations

import hashlib
import hmac
import time

from provisioner.records import BootToken, TokenCheck
from provisioner.registry_part import RegistryPart


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


class TokenTable(RegistryPart):
    def issue_boot_token(
        self,
        mac: str,
        token: str,
        *,
        asked_by: str,
        bound_to: str | None,
        expires: float,
        now: float | None = None,
    ) -> None:
        """Remember (a hash of) the token this boot's script hands to the node; it replaces
        the node's previous one. Who may have one is the caller's rule (routes_boot)."""
        now = time.time() if now is None else now
        with self._tx() as db:
            db.execute(
                "INSERT INTO boot_tokens(mac, hash, asked_by, bound_to, issued, expires, spent)"
                " VALUES (?, ?, ?, ?, ?, ?, NULL) ON CONFLICT(mac) DO UPDATE SET"
                " hash = excluded.hash, asked_by = excluded.asked_by,"
                " bound_to = excluded.bound_to, issued = excluded.issued,"
                " expires = excluded.expires, spent = NULL",
                (mac, hash_token(token), asked_by, bound_to, now, expires),
            )

    def boot_token(self, mac: str) -> BootToken | None:
        """The node's latest token as kept (live or not), without its hash."""
        with self._lock:
            row = self._db.execute("SELECT * FROM boot_tokens WHERE mac = ?", (mac,)).fetchone()
        if row is None:
            return None
        return BootToken(
            row["mac"], row["asked_by"], row["bound_to"], row["issued"], row["expires"],
            row["spent"],
        )  # fmt: skip

    def use_boot_token(
        self, mac: str, token: str, *, source: str, spend: bool = False, now: float | None = None
    ) -> TokenCheck:
        """Check ``token`` for a request from ``source``, in one transaction: it must be the
        node's latest, unexpired, and used from its bound address (a token bound to none is
        bound to ``source`` now). ``spend``: the inventory POST, once per token."""
        now = time.time() if now is None else now
        with self._tx() as db:
            row = db.execute("SELECT * FROM boot_tokens WHERE mac = ?", (mac,)).fetchone()
            if row is None or not hmac.compare_digest(row["hash"], hash_token(token)):
                return TokenCheck.UNKNOWN
            if now >= row["expires"]:
                return TokenCheck.EXPIRED
            if row["bound_to"] is None:
                db.execute("UPDATE boot_tokens SET bound_to = ? WHERE mac = ?", (source, mac))
            elif row["bound_to"] != source:
                return TokenCheck.ELSEWHERE
            if spend:
                if row["spent"] is not None:
                    return TokenCheck.SPENT
                db.execute("UPDATE boot_tokens SET spent = ? WHERE mac = ?", (now, mac))
        return TokenCheck.OK

    def check_boot_token(self, mac: str, token: str, *, now: float | None = None) -> bool:
        """Is ``token`` the node's latest and unexpired (changes nothing)?"""
        now = time.time() if now is None else now
        with self._lock:
            row = self._db.execute(
                "SELECT hash, expires FROM boot_tokens WHERE mac = ?", (mac,)
            ).fetchone()
        if row is None or now >= row["expires"]:
            return False
        return hmac.compare_digest(row["hash"], hash_token(token))
