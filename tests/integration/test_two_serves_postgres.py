"""Two `serve` instances in full mode on one segment, sharing one PostgreSQL registry
(issue 23, items 2 and 3): DHCP failover by shared state.

300 PXE clients come through a relay with both servers as helper addresses (each client
takes the first OFFER, as firmware does). After a third of them are ACKed, the first
serve is killed with SIGKILL; the clients go on with the second. Then:

- every client got an address and no address went to two MACs, although both servers
  allocate from the same range (the registry refuses a lease another serve holds; the
  loser's reply is held back and its table learns the owner);
- every ACK is a lease in PostgreSQL;
- the survivor renews the leases the dead serve gave (a client in RENEWING state asks
  whichever server answers), as it learned them from the shared registry.
"""

from __future__ import annotations

import json
import signal
import sys
import time
from ipaddress import IPv4Interface
from pathlib import Path

import pytest

from provisioner.lab.netns import HostSpec, LabNetwork
from provisioner.registry import Registry
from tests import pg_server
from tests.integration.conftest import need_root

pytestmark = [pytest.mark.root, pytest.mark.netns]

STORM = [sys.executable, "-m", "tests.integration.dhcp_storm"]
ONE, TWO, RELAY = "10.52.0.1", "10.52.0.3", "10.52.0.2"
CLIENTS, KILL_AT = 300, 100


def config(path: Path, address: str, state: Path, url: str) -> Path:
    path.write_text(
        f'[network]\ninterface = "eth0"\naddress = "{address}/16"\nmode = "full"\n'
        '[dhcp]\nrange = "10.52.1.1-10.52.9.254"\n'
        f'[http]\nport = 8080\n[paths]\nstate_dir = "{state}"\n'
        f'[registry]\nurl = "{url}"\n'
    )
    return path


def listening(lab: LabNetwork, host: str) -> bool:
    return ":67 " in lab.host(host).run(["ss", "-lun"], check=False).stdout


def test_two_serves_share_leases_and_survive_a_kill(tmp_path: Path, postgres_server: str) -> None:
    need_root()
    url = pg_server.fresh_database(postgres_server)
    Registry(url).close()  # the schema, before two serves race to make it
    hosts = [HostSpec(name, IPv4Interface(f"{address}/16"))
             for name, address in (("one", ONE), ("two", TWO), ("cli", RELAY))]  # fmt: skip
    acks, renewed = tmp_path / "acks.jsonl", tmp_path / "renewed.jsonl"
    with LabNetwork(hosts) as lab, (tmp_path / "serve.log").open("ab") as log:
        serves = {}
        for name, address in (("one", ONE), ("two", TWO)):
            cfg = config(tmp_path / f"{name}.toml", address, tmp_path / name, url)
            serves[name] = lab.host(name).popen(
                [sys.executable, "-m", "provisioner.cli", "--config", str(cfg),
                 "--log-level", "WARNING", "serve"], stderr=log)  # fmt: skip
        for name in serves:
            for _ in range(300):
                if listening(lab, name):
                    break
                time.sleep(0.05)
            else:
                raise AssertionError(
                    f"serve {name} did not start: {(tmp_path / 'serve.log').read_text()}"
                )
        storm = lab.host("cli").popen([*STORM, f"{ONE},{TWO}", RELAY, str(CLIENTS), str(acks)],
                                      stderr=log)  # fmt: skip

        def acked() -> list[dict[str, str]]:
            if not acks.exists():
                return []
            return [json.loads(line) for line in acks.read_text().splitlines()]

        while len(acked()) < KILL_AT and storm.poll() is None:
            time.sleep(0.01)
        # The serve that has ACKed more so far dies (which one wins the race to answer
        # depends on the run): the survivor must then renew what the dead one gave.
        so_far = acked()
        first = sum(a["server"] == ONE for a in so_far) >= len(so_far) / 2
        dead, alive = ("one", "two") if first else ("two", "one")
        dead_ip, alive_ip = (ONE, TWO) if first else (TWO, ONE)
        serves[dead].send_signal(signal.SIGKILL)
        serves[dead].wait(10)
        killed_at = len(acked())
        assert storm.wait(timeout=300) == 0, (tmp_path / "serve.log").read_text()[-3000:]

        held = acked()
        assert len(held) == CLIENTS
        owners: dict[str, set[str]] = {}
        for ack in held:
            owners.setdefault(ack["ip"], set()).add(ack["mac"])
        twice = {ip: [a for a in held if a["ip"] == ip] for ip, m in owners.items() if len(m) > 1}
        assert not twice, f"addresses ACKed to two MACs: {list(twice.values())[:3]}"
        by_server = {s: sum(1 for a in held if a["server"] == s) for s in (dead_ip, alive_ip)}
        assert by_server[dead_ip] > 0 and by_server[alive_ip] > 0, by_server
        assert all(a["server"] == alive_ip for a in held[killed_at + 5 :])  # only the survivor
        registry = Registry(url)
        leases = {lease.mac: str(lease.ip) for lease in registry.leases()}
        lost = [a for a in held if leases.get(a["mac"]) != a["ip"]]
        assert not lost, f"{len(lost)} ACKed leases not in PostgreSQL, e.g. {lost[:3]}"

        # The survivor renews what the dead serve gave, once it has read them (2 s).
        given = tmp_path / "one.jsonl"
        given.write_text("".join(json.dumps(a) + "\n" for a in held if a["server"] == dead_ip))
        time.sleep(3)
        done = lab.host("cli").run([*STORM, "renew", alive_ip, RELAY, str(given), str(renewed)],
                                   check=False, timeout=120)  # fmt: skip
        again = [json.loads(line) for line in renewed.read_text().splitlines()]
        assert done.returncode == 0, (len(again), by_server[dead_ip], done.stderr[-2000:])
        assert len(again) == by_server[dead_ip]
        assert all(r["server"] == alive_ip for r in again)
        mine = {a["mac"]: a["ip"] for a in held}
        assert all(mine[r["mac"]] == r["ip"] for r in again)  # the same address, renewed
        registry.close()
        metrics = lab.host("cli").run(
            ["curl", "-s", f"http://{alive_ip}:8080/metrics"], check=False
        )
        taken = [line for line in metrics.stdout.splitlines() if 'reason="lease-taken"' in line]
        serves[alive].terminate()
        serves[alive].wait(20)
    print(f"{CLIENTS} clients: {by_server[dead_ip]} ACKed by the serve killed at {killed_at}, "
          f"{by_server[alive_ip]} by the survivor; {len(again)} of the dead one's renewed "
          f"by the survivor; its offers that lost to the other's: {taken}")  # fmt: skip
