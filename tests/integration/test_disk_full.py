"""A full disk under the state folder (issue 20, item 6): `serve` runs with its state
folder on a small tmpfs that the test fills. It keeps renewing the leases it has (for no
longer than the registry records), refuses new leases it cannot record with a log line
and a counter, does not crash, and leases again once space returns; the registry passes
SQLite's integrity check afterwards."""

from __future__ import annotations

import contextlib
import errno
import json
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from ipaddress import IPv4Interface
from pathlib import Path

import pytest

from provisioner.lab.netns import HostSpec, LabNetwork, Namespace
from tests.integration.conftest import Appliance, need, need_root

pytestmark = [pytest.mark.root, pytest.mark.netns]

SERVER, RELAY = "10.52.0.1", "10.52.0.2"
RELAY_CLIENT = [sys.executable, "-m", "tests.integration.dhcp_relay", SERVER, RELAY]
LEASE_SECONDS = 3600
KNOWN = [f"02:52:00:00:00:{i:02x}" for i in range(1, 5)]
TMPFS = "size=16m,mode=0700"


def relay(ns: Namespace, verb: str, *targets: str) -> dict[str, dict[str, object]]:
    done = ns.run([*RELAY_CLIENT, verb, *targets], check=False, timeout=60)
    assert done.returncode == 0, done.stderr
    rows = [json.loads(line) for line in done.stdout.splitlines()]
    return {str(r["mac"]): r for r in rows}


@contextlib.contextmanager
def small_disk(path: Path) -> Iterator[Path]:
    path.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", TMPFS, "tmpfs", str(path)], check=True)
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def fill(disk: Path) -> Path:
    """Write a file until the filesystem has no block left; the file."""
    filler = disk / "filler"
    chunk = b"\0" * 65536
    with open(filler, "wb", buffering=0) as fh:
        with contextlib.suppress(OSError):
            while True:
                fh.write(chunk)
        while True:  # the last few bytes
            try:
                fh.write(b"\0" * 512)
            except OSError as exc:
                assert exc.errno == errno.ENOSPC
                break
    return filler


def counter(app: Appliance, ns: Namespace, name: str) -> float:
    text = ns.run(["curl", "-s", "--max-time", "10", f"{app.base}/metrics"]).stdout
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith(name) and not line.startswith("#")
    )


def test_full_state_disk(tmp_path: Path) -> None:
    need_root()
    need("curl", "mount")
    hosts = [
        HostSpec("srv", IPv4Interface(f"{SERVER}/16")),
        HostSpec("cli", IPv4Interface(f"{RELAY}/16")),
    ]
    with LabNetwork(hosts) as lab, small_disk(tmp_path / "state") as state:
        app = Appliance(
            config=tmp_path / "provisioner.toml",
            state=state,
            http_port=8080,
            tftp_port=69,
            dhcp_port=67,
            pxe_port=4011,
            host=SERVER,
            log=tmp_path / "serve.log",
            prefix=tuple(lab.host("srv").argv([])),
        )
        (tmp_path / "tftp").mkdir()
        app.config.write_text(
            f'[network]\ninterface = "eth0"\naddress = "{SERVER}/16"\nmode = "full"\n'
            f'[dhcp]\nrange = "10.52.1.1-10.52.1.254"\nlease_seconds = {LEASE_SECONDS}\n'
            f'[tftp]\nroot = "{tmp_path / "tftp"}"\n'
            f'[http]\nport = 8080\n[paths]\nstate_dir = "{state}"\n'
        )
        cli = lab.host("cli")
        try:
            app.start()
            leased = relay(cli, "lease", *KNOWN)
            assert all(r["ip"] for r in leased.values()), leased

            filler = fill(state)
            # New clients until one cannot be recorded: the registry's WAL may still have
            # room for a few transactions after the filesystem's last block is gone.
            refused: list[str] = []
            for i in range(1, 200):
                mac = f"02:52:00:00:01:{i:02x}"
                if relay(cli, "lease", mac)[mac]["ip"] is None:
                    refused.append(mac)
                    break
            assert refused, "every new lease was recorded on a full disk?"
            assert counter(app, cli, 'provisioner_dhcp_dropped_total{reason="not-recorded"}') > 0
            log = app.log.read_text()
            assert "cannot record" in log, log[-3000:]

            # Known leases are renewed, for no longer than the registry holds them.
            renewed = relay(cli, "renew", *(f"{m}={leased[m]['ip']}" for m in KNOWN))
            for mac in KNOWN:
                assert renewed[mac]["ip"] == leased[mac]["ip"], renewed
                seconds = renewed[mac]["lease_time"]
                assert isinstance(seconds, int) and 0 < seconds < LEASE_SECONDS, renewed
            assert counter(app, cli, "provisioner_dhcp_unrecorded_renewals_total") >= len(KNOWN)
            assert app.proc is not None and app.proc.poll() is None, "serve died"

            # Space returns: new clients get leases again.
            filler.unlink()
            time.sleep(0.1)
            mac = "02:52:00:00:02:01"
            again = relay(cli, "lease", mac, *refused)
            assert all(r["ip"] for r in again.values()), again
            renewed = relay(cli, "renew", *(f"{m}={leased[m]['ip']}" for m in KNOWN))
            assert all(renewed[m]["lease_time"] == LEASE_SECONDS for m in KNOWN), renewed
        finally:
            app.stop()
        with sqlite3.connect(state / "registry.sqlite3") as db:
            assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)
            held = {r[0] for r in db.execute("SELECT mac FROM leases WHERE kind = 'bound'")}
        assert {*KNOWN, mac, *refused} <= held
