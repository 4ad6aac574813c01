"""The registry's events: each node's timeline (records.EventKind), one row per event;
``on_event`` hears each one as it is written (metrics' boot clock)."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence

from provisioner.records import Detail, Event, EventKind
from provisioner.registry_part import RegistryPart


class EventTable(RegistryPart):
    on_event: Callable[[Event], None] | None

    def add_event(
        self, mac: str, kind: EventKind, detail: Detail, *, ts: float | None = None
    ) -> None:
        self.add_events([Event(mac, self._clock() if ts is None else ts, kind, detail)])

    def add_events(self, events: Sequence[Event]) -> None:
        """Events in one statement sent for all (DHCP's batch: two per packet), in the
        transaction in progress if there is one."""
        if not events:
            return
        with self._tx() as db:
            db.executemany(
                "INSERT INTO events(mac, ts, kind, detail) VALUES (?, ?, ?, ?)",
                [(e.mac, e.ts, e.kind.value, json.dumps(dict(e.detail))) for e in events],
            )
            if self.on_event is not None:
                for event in events:
                    self.on_event(event)

    def events(self, mac: str, *, limit: int = 500) -> list[Event]:
        with self._lock:
            rows = self._db.execute(
                "SELECT * FROM (SELECT * FROM events WHERE mac = ? ORDER BY id DESC LIMIT ?)"
                " AS recent ORDER BY id",
                (mac, limit),
            ).fetchall()
        return [
            Event(r["mac"], r["ts"], EventKind(r["kind"]), json.loads(r["detail"])) for r in rows
        ]
