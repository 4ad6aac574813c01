"""The registry's tables (SQLite DDL) and the steps that bring a file up to date.

Data only: :mod:`provisioner.registry_migrate` applies :data:`MIGRATIONS` in order, each in
one transaction that ends by setting ``PRAGMA user_version`` to the step's version.

- A file made before user_version (``meta.schema`` 1 or 2, user_version 0) and a new,
  empty one both start at 0: step 2 creates whatever tables and columns they lack (the
  statements are idempotent), so both end with the same schema and no row is touched.
- :data:`SCHEMA` is schema 2 as it shipped and never changes again: a later table, column
  or index is a new step at the end of :data:`MIGRATIONS` (new files run every step).
- ``meta.schema`` still mirrors the version for tools that read it; user_version rules.
"""

from __future__ import annotations

from dataclasses import dataclass

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS nodes (
    mac TEXT PRIMARY KEY,
    hostname TEXT UNIQUE,
    state TEXT NOT NULL,
    profile TEXT,
    ip TEXT,
    firmware TEXT,
    arch INTEGER,
    first_seen REAL NOT NULL,
    last_seen REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS nodes_ip ON nodes(ip);
CREATE TABLE IF NOT EXISTS leases (
    ip TEXT PRIMARY KEY,
    mac TEXT NOT NULL,
    expires REAL NOT NULL,
    kind TEXT NOT NULL          -- offered | bound | declined
);
CREATE INDEX IF NOT EXISTS leases_mac ON leases(mac);
CREATE TABLE IF NOT EXISTS events (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    mac TEXT NOT NULL,
    ts REAL NOT NULL,
    kind TEXT NOT NULL,
    detail TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS events_mac ON events(mac, id);
CREATE TABLE IF NOT EXISTS inventories (
    mac TEXT PRIMARY KEY,
    received REAL NOT NULL,
    data TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS power (
    mac TEXT PRIMARY KEY,
    url TEXT NOT NULL,          -- power/settings.py's URL: driver, BMC, user; no password
    updated REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS clusters (
    name TEXT PRIMARY KEY,
    spec TEXT NOT NULL,         -- JSON: records.py's Cluster
    updated REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS steps (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    run TEXT NOT NULL,          -- one post-install or smoke run
    mac TEXT NOT NULL,
    step TEXT NOT NULL,
    status TEXT NOT NULL,       -- unchanged | changed | failed
    exit_status INTEGER,
    output TEXT NOT NULL,
    seconds REAL NOT NULL,
    ts REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS steps_mac ON steps(mac, id);
CREATE TABLE IF NOT EXISTS profile_images (
    profile TEXT PRIMARY KEY,
    image TEXT NOT NULL,        -- name (its newest version) or name@version (pinned)
    updated REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS boot_tokens (
    mac TEXT PRIMARY KEY,       -- one per node: its latest boot script's
    hash TEXT NOT NULL,         -- sha256 of the token; the token itself is never stored
    asked_by TEXT NOT NULL,     -- the address that fetched the script
    bound_to TEXT,              -- the one address that may use it (NULL: its first user)
    issued REAL NOT NULL,
    expires REAL NOT NULL,
    spent REAL                  -- when its one inventory POST came
);
CREATE TABLE IF NOT EXISTS pending_inventories (
    mac TEXT PRIMARY KEY,       -- a report held for `node approve` (the latest one)
    received REAL NOT NULL,
    data TEXT NOT NULL,
    ip TEXT,                    -- proxy mode: the address it came from
    changes TEXT NOT NULL       -- JSON: what it would change (keys, profile, address)
);
"""

# Columns added after a table was first shipped: (table, column, declaration). Version 1
# had nodes.boot_token (one hashed token per node): left unused in old files.
ADDED_COLUMNS = (
    ("nodes", "image", "TEXT"),  # the image@version its last script named
    ("nodes", "dhcp_ip", "TEXT"),  # proxy mode: the address its PXE DHCP named (never its ip)
)


@dataclass(frozen=True)
class Migration:
    """One step: ``script`` runs and ``columns`` a file lacks are added, then the file's
    user_version becomes ``version``; all in one transaction, so all or nothing."""

    version: int
    why: str
    script: str = ""  # statements separated by ";" (no transaction control in them)
    columns: tuple[tuple[str, str, str], ...] = ()  # (table, column, declaration)


MIGRATIONS: tuple[Migration, ...] = (
    Migration(
        2,
        "schema 2, what provisioner made before user_version: a meta.schema 1 file gains"
        " boot_tokens, pending_inventories, nodes.image and nodes.dhcp_ip",
        SCHEMA,
        ADDED_COLUMNS,
    ),
    Migration(
        3,
        "index nodes.dhcp_ip: node_by_ip (each TFTP transfer, proxy mode) without a table scan",
        "CREATE INDEX IF NOT EXISTS nodes_dhcp_ip ON nodes(dhcp_ip);",
    ),
    Migration(
        4,
        "day two: node_images (a node pinned to a version while a roll moves it),"
        " profile_images.previous (the version `image use --rollback` returns to) and"
        " node_disks (the disk `node disk init` made a node's cache)",
        """CREATE TABLE IF NOT EXISTS node_images (
    mac TEXT PRIMARY KEY,
    image TEXT NOT NULL,        -- name@version: boots this, whatever its profile's image
    updated REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS node_disks (
    mac TEXT PRIMARY KEY,
    device TEXT NOT NULL,       -- /dev/disk/by-id/... or by-path/...: never sda
    formatted REAL NOT NULL
);""",
        (("profile_images", "previous", "TEXT"),),
    ),
    Migration(
        5,
        "the gateway's API keys (hashed) and their usage per served model",
        """CREATE TABLE IF NOT EXISTS gateway_keys (
    name TEXT PRIMARY KEY,
    id TEXT NOT NULL UNIQUE,    -- the pvk-<id>- part of the key: finds its record
    hash TEXT NOT NULL,         -- SHA-256 of the whole key; the key itself is kept nowhere
    models TEXT,                -- JSON list of served names; NULL: all
    rpm INTEGER,                -- requests a minute; NULL: no limit
    created REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS gateway_usage (
    key TEXT NOT NULL,          -- a key's name ('-': the open gateway, no key)
    model TEXT NOT NULL,
    requests INTEGER NOT NULL DEFAULT 0,
    errors INTEGER NOT NULL DEFAULT 0,
    tokens_in INTEGER NOT NULL DEFAULT 0,
    tokens_out INTEGER NOT NULL DEFAULT 0,
    updated REAL NOT NULL,
    PRIMARY KEY (key, model)
);""",
    ),
)

SCHEMA_VERSION = MIGRATIONS[-1].version  # the newest schema this provisioner knows
