"""The registry's inventories: each node's last agent report, and a report held for
``node approve`` with what it would change.

A part of :class:`provisioner.registry.Registry` (its base class), kept apart by concern
as the leases are; it uses the registry's connection, lock, transactions, event writer
and state machine.
"""

from __future__ import annotations

import json
import time

from provisioner.discovery.model import Inventory
from provisioner.discovery.schema import inventory_of
from provisioner.records import Detail, Event, EventKind, Node, PendingInventory
from provisioner.registry_events import EventTable
from provisioner.states import NodeEvent


class InventoryTable(EventTable):
    def transition(self, mac: str, event: NodeEvent, *, reason: str | None = None) -> Node:
        raise NotImplementedError  # the registry's state machine

    def store_inventory(self, mac: str, data: str, *, now: float | None = None) -> Node:
        """Keep the agent's report and move the node on (new/failed -> discovered)."""
        now = time.time() if now is None else now
        with self._tx() as db:
            db.execute(
                "INSERT INTO inventories(mac, received, data) VALUES (?, ?, ?)"
                " ON CONFLICT(mac) DO UPDATE"
                " SET received = excluded.received, data = excluded.data",
                (mac, now, data),
            )
            self.add_event(mac, EventKind.INVENTORY, {"bytes": len(data)}, ts=now)
        return self.transition(mac, NodeEvent.INVENTORY, reason="inventory received")

    def hold_inventory(
        self, mac: str, data: str, *, ip: str | None, changes: Detail, now: float | None = None
    ) -> None:
        """Keep a report aside for ``node approve`` (replacing one held before) and put
        it on the node's timeline: an ``inventory`` event (the node did report: the lab
        and ``enroll --wait`` follow those), then ``approval`` with what it would change."""
        now = time.time() if now is None else now
        with self._tx() as db:
            db.execute(
                "INSERT INTO pending_inventories(mac, received, data, ip, changes)"
                " VALUES (?, ?, ?, ?, ?) ON CONFLICT(mac) DO UPDATE SET"
                " received = excluded.received, data = excluded.data, ip = excluded.ip,"
                " changes = excluded.changes",
                (mac, now, data, ip, json.dumps(dict(changes))),
            )
            self.add_events([
                Event(mac, now, EventKind.INVENTORY, {"bytes": len(data), "held": True}),
                Event(mac, now, EventKind.APPROVAL, {"status": "pending", **changes}),
            ])  # fmt: skip

    def pending_inventory(self, mac: str) -> PendingInventory | None:
        with self._lock:
            row = self._db.execute(
                "SELECT * FROM pending_inventories WHERE mac = ?", (mac,)
            ).fetchone()
        if row is None:
            return None
        return PendingInventory(
            row["mac"], row["received"], row["data"], row["ip"], json.loads(row["changes"])
        )

    def drop_pending_inventory(self, mac: str) -> None:
        with self._tx() as db:
            db.execute("DELETE FROM pending_inventories WHERE mac = ?", (mac,))

    def inventory_document(self, mac: str) -> str | None:
        """The document the node's agent last sent, as it was stored (JSON text)."""
        with self._lock:
            row = self._db.execute("SELECT data FROM inventories WHERE mac = ?", (mac,)).fetchone()
        return str(row["data"]) if row else None

    def inventory(self, mac: str) -> Inventory | None:
        """The node's last inventory, typed; None if there is none or it does not fit the
        schema (the document stays readable through :meth:`inventory_document`)."""
        document = self.inventory_document(mac)
        return inventory_of(document) if document else None
