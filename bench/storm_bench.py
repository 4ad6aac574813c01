"""The 10,000-node boot storm (issue 23): several boot servers on one PostgreSQL registry,
against one serve on SQLite, with the same scripted clients (run on demand, not a test).

Each segment is a bridge of its own (network namespaces, made and removed here) with a
full-mode `serve` (its own pool, its own image store holding a stand-in discovery image:
an 8 MiB kernel) and a client namespace running bench/storm_client.py: its share of the
clients do DHCP through a relay address, then, each from its leased address, fetch their
boot script and a range of the kernel it names. Run twice, with the same clients:

  1. SEGMENTS segments, one serve each, all on one PostgreSQL registry (a throwaway
     server from Debian's postgresql, on a Unix socket, fsync on);
  2. one segment, one serve, its SQLite registry, every client.

Printed for each: time to all-booted (first DISCOVER to the last kernel range), the DHCP
phase's offers/s for each serve, the registry's commits/s (PostgreSQL's xact_commit over
the storm), and the checks: every client an address of its own, its script and its
kernel; the registry holds every node, each with its DHCP, script and file events.

    .venv/bin/python bench/storm_bench.py [--clients 10000] [--segments 4] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from ipaddress import IPv4Interface
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import stop

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from provisioner.image.store import ImageStore  # noqa: E402
from provisioner.lab.netns import HostSpec, LabNetwork  # noqa: E402
from provisioner.registry import Registry  # noqa: E402
from tests import pg_server  # noqa: E402

KERNEL_BYTES = 8 << 20
# The kernel's ARP cache is one table for every namespace, 1,024 entries at most by
# default: past that, "neighbor table overflow" and the boot servers' replies to new
# addresses were dropped (a fifth of 10,000 clients timed out connecting). A control node
# with more than ~1,000 nodes on its segments needs the same (docs/scale.md).
NEIGH = "net.ipv4.neigh.default.gc_thresh{}"


@contextmanager
def arp_room(entries: int) -> Iterator[None]:
    """Room for ``entries`` in the ARP cache for the storm; the old limits put back."""
    names = [NEIGH.format(n) for n in (1, 2, 3)]
    old = [subprocess.run(["sysctl", "-n", n], capture_output=True, text=True,
                          check=True).stdout.strip() for n in names]  # fmt: skip
    wanted = [entries, entries * 2, entries * 4]
    try:
        for name, before, value in zip(names, old, wanted, strict=True):
            if int(before) < value:
                subprocess.run(["sysctl", "-qw", f"{name}={value}"], check=True)
        yield
    finally:
        for name, before in zip(names, old, strict=True):
            subprocess.run(["sysctl", "-qw", f"{name}={before}"], check=False)


def serve_config(state: Path, segment: int, registry_url: str | None) -> str:
    registry = f'[registry]\nurl = "{registry_url}"\n' if registry_url else ""
    return (
        f'[network]\ninterface = "eth0"\naddress = "10.{60 + segment}.0.1/16"\nmode = "full"\n'
        f'[dhcp]\nrange = "10.{60 + segment}.1.1-10.{60 + segment}.250.250"\n'
        f'[http]\nport = 8080\n[paths]\nstate_dir = "{state}"\n{registry}'
    )


def wait_listening(lab: LabNetwork, what: list[str], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        out = lab.host("srv").run(["ss", "-lnu", "-lnt"], check=False).stdout
        if all(w in out for w in what):
            return
        time.sleep(0.2)
    raise SystemExit(f"serve did not listen on {what} within {timeout:.0f} s:\n{out}")


def commits(admin_url: str | None) -> int:
    if admin_url is None:
        return 0
    import psycopg

    with psycopg.connect(admin_url, autocommit=True) as conn:
        row = conn.execute("SELECT sum(xact_commit) FROM pg_stat_database").fetchone()
    return int(row[0] if row else 0)


def storm(
    work: Path, segments: int, clients: int, registry_url: str | None, admin_url: str | None
) -> dict[str, Any]:
    """One storm: ``clients`` spread over ``segments`` serves; its figures and checks."""
    per = [clients // segments + (1 if i < clients % segments else 0) for i in range(segments)]
    kernel = os.urandom(KERNEL_BYTES)
    with ExitStack() as stack:
        labs, serves = [], []
        for i in range(segments):
            lab = stack.enter_context(LabNetwork([
                HostSpec("srv", IPv4Interface(f"10.{60 + i}.0.1/16")),
                HostSpec("cli", IPv4Interface(f"10.{60 + i}.0.2/16")),
            ]))  # fmt: skip
            state = work / f"seg{i}" / "state"
            ImageStore(state / "images").publish_files(
                "discovery", {"vmlinuz": kernel, "initrd": os.urandom(1 << 20)}
            )
            conf = work / f"seg{i}" / "serve.toml"
            conf.write_text(serve_config(state, i, registry_url))
            log = stack.enter_context((work / f"seg{i}" / "serve.log").open("wb"))
            serve = lab.host("srv").popen(
                [str(ROOT / ".venv/bin/provisioner"), "--config", str(conf),
                 "--log-level", "WARNING", "serve"], stderr=log,
            )  # fmt: skip
            stack.callback(stop, serve)
            labs.append(lab)
            serves.append(serve)
        for lab in labs:
            wait_listening(lab, ["%eth0:67 ", ":8080 "])
        before = commits(admin_url)
        started = time.monotonic()
        procs = [
            lab.host("cli").popen(
                [
                    sys.executable,
                    str(ROOT / "bench/storm_client.py"),
                    "eth0",
                    f"10.{60 + i}.0.2",
                    f"10.{60 + i}.0.1",
                    f"02:5e:{i:02x}",
                    str(per[i]),
                    str(work / f"seg{i}.json"),
                ],
            )
            for i, lab in enumerate(labs)
        ]
        for proc in procs:
            proc.wait(3600)
        seconds = time.monotonic() - started
        committed = commits(admin_url) - before
        results = [json.loads((work / f"seg{i}.json").read_text()) for i in range(segments)]
        location: Path | str = registry_url or work / "seg0" / "state" / "registry.sqlite3"
        registry = Registry(location, readonly=True)
        try:
            held = registry.query(
                "SELECT count(*) AS nodes, count(DISTINCT ip) AS addresses FROM nodes"
            )[0]
            timeline = registry.query(
                "SELECT count(*) AS complete FROM (SELECT mac FROM events GROUP BY mac HAVING"
                " sum(CASE WHEN kind = 'dhcp' THEN 1 ELSE 0 END) > 0"
                " AND sum(CASE WHEN kind = 'script' THEN 1 ELSE 0 END) > 0"
                " AND sum(CASE WHEN kind = 'http-file' THEN 1 ELSE 0 END) > 0) AS done"
            )[0]
        finally:
            registry.close()
    return {
        "segments": segments,
        "registry": "postgresql" if registry_url else "sqlite",
        "clients": clients,
        "booted": sum(r["booted"] for r in results),
        "unique_addresses": sum(r["unique_addresses"] for r in results),
        "all_booted_s": round(seconds, 1),
        "offers_per_s": [round(r["offers"] / r["dhcp_s"], 1) for r in results],
        "dhcp_s": [r["dhcp_s"] for r in results],
        "http_s": [r["http_s"] for r in results],
        "commits_per_s": round(committed / seconds, 1) if admin_url else None,
        "registry_nodes": int(held["nodes"]),
        "registry_addresses": int(held["addresses"]),
        "complete_timelines": int(timeline["complete"]),
        "first_failures": [f for r in results for f in r["first_failures"]][:10],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--clients", type=int, default=10000)
    parser.add_argument("--segments", type=int, default=4)
    parser.add_argument("--skip-sqlite", action="store_true", help="the PostgreSQL storm only")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    runs = []
    with tempfile.TemporaryDirectory(prefix="pv-storm-") as tmp, arp_room(args.clients * 2):
        with pg_server.server(durable=True) as admin:
            url = pg_server.fresh_database(admin)
            runs.append(storm(Path(tmp) / "pg", args.segments, args.clients, url, admin))
        if not args.skip_sqlite:
            runs.append(storm(Path(tmp) / "sqlite", 1, args.clients, None, None))
    if args.json:
        print(json.dumps(runs, indent=2))
        return
    for run in runs:
        print(
            f"{run['clients']} clients, {run['segments']} serve(s) on {run['registry']}: "
            f"all booted in {run['all_booted_s']} s ({run['booted']} booted, "
            f"{run['unique_addresses']} distinct addresses); DHCP offers/s per serve "
            f"{run['offers_per_s']} (DHCP phase {run['dhcp_s']} s, HTTP {run['http_s']} s); "
            f"registry: {run['registry_nodes']} nodes, {run['registry_addresses']} addresses, "
            f"{run['complete_timelines']} timelines with DHCP, script and file"
            + (f"; {run['commits_per_s']} PostgreSQL commits/s" if run["commits_per_s"] else "")
        )
        for failure in run["first_failures"]:
            print(f"  failed: {failure}")


if __name__ == "__main__":
    main()
