"""Crash safety of DHCP leases (issue 20, item 1): 500 PXE clients (through a relay, from
another namespace) while `serve` is killed with SIGKILL 20 times at random moments and
started again each time. Every ACK a client received is in the registry afterwards, no
address was ever ACKed to two MACs, SQLite's integrity check passes, and a new node still
gets its address after the last restart."""

from __future__ import annotations

import json
import random
import signal
import sqlite3
import sys
import threading
import time
from ipaddress import IPv4Interface
from pathlib import Path

import pytest

from provisioner.lab.netns import HostSpec, LabNetwork
from provisioner.registry import Registry
from tests.integration.conftest import need_root

pytestmark = [pytest.mark.root, pytest.mark.netns]

ROOT = Path(__file__).resolve().parents[2]
STORM = [sys.executable, "-m", "tests.integration.dhcp_storm"]
SERVER, RELAY = "10.51.0.1", "10.51.0.2"
CLIENTS, KILLS = 500, 20


def listening(lab: LabNetwork) -> bool:
    return ":67 " in lab.host("srv").run(["ss", "-lun"], check=False).stdout


def test_no_acked_lease_is_lost_to_kill_9(tmp_path: Path) -> None:
    need_root()
    state = tmp_path / "state"
    config = tmp_path / "provisioner.toml"
    config.write_text(
        f'[network]\ninterface = "eth0"\naddress = "{SERVER}/16"\nmode = "full"\n'
        '[dhcp]\nrange = "10.51.1.1-10.51.9.254"\n'
        f'[http]\nport = 8080\n[paths]\nstate_dir = "{state}"\n'
    )
    argv = [sys.executable, "-m", "provisioner.cli", "--config", str(config), "--log-level",
            "WARNING", "serve"]  # fmt: skip
    hosts = [
        HostSpec("srv", IPv4Interface(f"{SERVER}/16")),
        HostSpec("cli", IPv4Interface(f"{RELAY}/16")),
    ]
    acks = tmp_path / "acks.jsonl"
    kills: list[float] = []
    with LabNetwork(hosts) as lab, (tmp_path / "serve.log").open("ab") as log:
        serve = {"proc": lab.host("srv").popen(argv, stderr=log)}

        def start() -> None:
            serve["proc"] = lab.host("srv").popen(argv, stderr=log)
            for _ in range(200):
                if listening(lab):
                    return
                time.sleep(0.05)
            raise AssertionError("serve did not come back")

        for _ in range(200):
            if listening(lab):
                break
            time.sleep(0.05)
        client = lab.host("cli").popen(
            [*STORM, SERVER, RELAY, str(CLIENTS), str(acks)],
            stderr=log,
        )  # fmt: skip
        rng = random.Random(20)

        def acked() -> int:
            return acks.read_text().count("\n") if acks.exists() else 0

        def killer() -> None:
            """A kill somewhere in each run of CLIENTS / KILLS ACKs (whatever the speed:
            the moment is random within the flow of leases), then a restart."""
            step = CLIENTS // KILLS
            for k in range(KILLS):
                at = k * step + rng.randrange(1, step)
                while acked() < at and client.poll() is None:
                    time.sleep(0.005)
                if client.poll() is not None:
                    return
                time.sleep(rng.uniform(0, 0.03))  # inside or after the write-behind window
                serve["proc"].send_signal(signal.SIGKILL)
                serve["proc"].wait(10)
                kills.append(time.monotonic())
                start()

        thread = threading.Thread(target=killer)
        thread.start()
        assert client.wait(timeout=600) == 0, (tmp_path / "serve.log").read_text()[-3000:]
        thread.join(60)
        serve["proc"].send_signal(signal.SIGKILL)
        serve["proc"].wait(10)

        held = [json.loads(line) for line in acks.read_text().splitlines()]
        assert len(held) == CLIENTS and len(kills) >= KILLS, (len(held), len(kills))
        owners: dict[str, set[str]] = {}
        for ack in held:
            owners.setdefault(ack["ip"], set()).add(ack["mac"])
        assert all(len(macs) == 1 for macs in owners.values()), "an address ACKed to two MACs"
        registry = Registry(state / "registry.sqlite3")
        leases = {lease.mac: str(lease.ip) for lease in registry.leases()}
        registry.close()
        lost = [a for a in held if leases.get(a["mac"]) != a["ip"]]
        assert not lost, f"{len(lost)} ACKed leases not in the registry, e.g. {lost[:3]}"
        with sqlite3.connect(state / "registry.sqlite3") as db:
            assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)

        # after the last crash, a new node still gets an address
        start()
        done = lab.host("cli").run(
            [*STORM, SERVER, RELAY, str(CLIENTS + 1), str(acks)],
            check=False, timeout=120,
        )  # fmt: skip
        assert done.returncode == 0
        serve["proc"].terminate()
        serve["proc"].wait(20)
    print(f"{CLIENTS} clients ACKed through {len(kills)} kill -9s; none lost")
