"""What the registry's tables (leases, boot tokens, inventories: registry_*.py) take from
:class:`provisioner.registry.Registry`, which mixes them in: its connection, its lock and
its transaction. Declared once here so each table module holds only its own queries."""

from __future__ import annotations

import threading
from contextlib import AbstractContextManager
from typing import Any


class RegistryPart:
    _db: Any  # the registry's connection (sqlite3, or registry_pg's)
    _lock: threading.RLock

    def _tx(self) -> AbstractContextManager[Any]:
        raise NotImplementedError  # the registry's transaction

    def _clock(self) -> float:
        raise NotImplementedError  # the registry's time.time (tests set it)
