"""The gateway's registry side: the replica table and the keys read, usage written.

:class:`RegistrySource` reads everything the front door needs in one :meth:`snapshot`
(the clusters, their heads, each cluster's last smoke decode tokens/s and engine key, the
API keys), which the front door takes every second on a thread, so no request ever waits
on SQLite. Usage is added in batches (:meth:`add_usage`). The key commands
(``provisioner gateway key ...``) use the functions below on the same tables.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from provisioner.clusters import keys as cluster_keys
from provisioner.clusters.spec import ClusterError
from provisioner.clusters.store import load_all
from provisioner.errors import NotFound, RegistryConflict
from provisioner.gateway.apikeys import ApiKey
from provisioner.gateway.replicas import Table, table
from provisioner.records import Node
from provisioner.registry import Registry

log = logging.getLogger(__name__)

DECODE_STEP = "smoke:decode_tokens_per_s"  # the smoke check whose value weighs a replica


class KeyExists(RegistryConflict):
    """A key of that name is there already."""


class KeyNotFound(NotFound):
    """No key of that name."""


@dataclass(frozen=True)
class Snapshot:
    table: Table
    keys: Mapping[str, ApiKey]  # by id


@dataclass(frozen=True)
class UsageRow:
    key: str
    model: str
    requests: int = 0
    errors: int = 0
    tokens_in: int = 0
    tokens_out: int = 0


class Source(Protocol):
    """What the front door reads its table and keys from, and writes usage to."""

    def snapshot(self) -> Snapshot: ...

    def add_usage(self, rows: list[UsageRow]) -> None: ...


class RegistrySource:
    def __init__(self, registry: Registry, state_dir: Path | None):
        self.registry = registry
        self.state_dir = state_dir  # where the clusters' engine keys are

    def snapshot(self) -> Snapshot:
        try:
            clusters = load_all(self.registry)
        except ClusterError as exc:  # a cluster removed while read: next time
            log.warning("gateway table: %s", exc)
            clusters = []
        heads: dict[str, Node] = {}
        decode: dict[str, float] = {}
        engine: dict[str, str] = {}
        for cluster in clusters:
            head = self.registry.node(cluster.head)
            if head is not None:
                heads[cluster.head] = head
                figure = _decode_tps(self.registry.last_step_output(head.mac, DECODE_STEP))
                if figure is not None:
                    decode[cluster.name] = figure
            if self.state_dir is not None:
                key = cluster_keys.existing(self.state_dir, cluster.name, "engine")
                if key:
                    engine[cluster.name] = key
        return Snapshot(
            table(clusters, heads, decode, engine), {k.id: k for k in list_keys(self.registry)}
        )

    def add_usage(self, rows: list[UsageRow]) -> None:
        if not rows or self.registry.readonly:
            return
        now = time.time()
        self.registry.execute(
            "INSERT INTO gateway_usage(key, model, requests, errors, tokens_in, tokens_out,"
            " updated) VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT(key, model) DO UPDATE SET"
            " requests = requests + excluded.requests, errors = errors + excluded.errors,"
            " tokens_in = tokens_in + excluded.tokens_in,"
            " tokens_out = tokens_out + excluded.tokens_out, updated = excluded.updated",
            [(r.key, r.model, r.requests, r.errors, r.tokens_in, r.tokens_out, now) for r in rows],
        )


def _decode_tps(output: str | None) -> float | None:
    if not output:
        return None
    try:
        value = json.loads(output).get("value")
    except (ValueError, AttributeError):
        return None
    return float(value) if isinstance(value, int | float) and value > 0 else None


# ---------------------------------------------------------------- the key commands


def _key(row: dict[str, Any]) -> ApiKey:
    models = json.loads(row["models"]) if row["models"] else None
    return ApiKey(row["name"], row["id"], row["hash"], tuple(models) if models else None,
                  row["rpm"], row["created"])  # fmt: skip


def list_keys(registry: Registry) -> list[ApiKey]:
    return [_key(r) for r in registry.query("SELECT * FROM gateway_keys ORDER BY name")]


def add_key(registry: Registry, key: ApiKey) -> None:
    models = json.dumps(list(key.models)) if key.models else None
    try:
        registry.execute(
            "INSERT INTO gateway_keys(name, id, hash, models, rpm, created)"
            " VALUES (?, ?, ?, ?, ?, ?)",
            [(key.name, key.id, key.hash, models, key.rpm, key.created)],
        )
    except RegistryConflict:
        raise KeyExists(f"a key named {key.name!r} exists: remove it first") from None


def remove_key(registry: Registry, name: str) -> None:
    if not registry.execute("DELETE FROM gateway_keys WHERE name = ?", [(name,)]):
        raise KeyNotFound(f"no key named {name!r}")


def usage(registry: Registry) -> list[UsageRow]:
    rows = registry.query("SELECT * FROM gateway_usage ORDER BY key, model")
    return [
        UsageRow(r["key"], r["model"], r["requests"], r["errors"], r["tokens_in"], r["tokens_out"])
        for r in rows
    ]
