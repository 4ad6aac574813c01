"""The cluster side of smoke: what is checked on the nodes over SSH.

:func:`provisioner.smoke.run.run_smoke` needs only HTTP, the head's log and a sampler per
worker; this module gets those from the nodes (their connections are the caller's) and
adds the checks that need a shell there: every unit active, and a restart (a worker's RPC
server killed, systemd brings it back, a completion works again).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from provisioner.clusters import Cluster
from provisioner.postinstall.ssh import Connection
from provisioner.smoke.report import Check

HEAD_UNIT = "llama-server.service"
WORKER_UNIT = "llama-rpc.service"
RESTART_WAIT_S = 120.0


def units_of(cluster: Cluster, hostname: str) -> list[str]:
    return [HEAD_UNIT] if cluster.role(hostname) == "head" else [WORKER_UNIT]


def unit_checks(conns: dict[str, Connection], cluster: Cluster) -> list[Any]:
    checks = []
    for hostname, conn in conns.items():
        for unit in units_of(cluster, hostname):
            state = conn.run(f"systemctl is-active {unit}", timeout=30).stdout.strip()
            checks.append(Check(f"unit[{hostname}:{unit}]", state == "active", state, "active"))
    return checks


HEAD_LOG = "/var/log/llama-server.log"  # the unit truncates it at each start


def head_log(conn: Connection) -> str:
    """The head's output since it last started."""
    return conn.run(f"cat {HEAD_LOG}", timeout=60).stdout


def restart_check(
    conns: dict[str, Connection], cluster: Cluster, endpoint: str, progress: Any
) -> Any:
    """Kill one worker's RPC server: systemd brings it back and a completion works again."""
    from provisioner.smoke.client import SmokeHttpError, stream_chat, wait_healthy

    worker = cluster.workers[0]
    conn = conns[worker]
    before = conn.run(f"systemctl show -p MainPID --value {WORKER_UNIT}", timeout=30).stdout.strip()
    conn.run(f"kill -9 {before}", timeout=30)
    progress(f"smoke: killed {worker}'s RPC server (pid {before}); waiting for systemd")
    started = time.monotonic()
    after = before
    while time.monotonic() - started < RESTART_WAIT_S:
        active = conn.run(f"systemctl is-active {WORKER_UNIT}", timeout=30).stdout.strip()
        after = conn.run(f"systemctl show -p MainPID --value {WORKER_UNIT}", timeout=30).stdout
        after = after.strip()
        if active == "active" and after not in ("", "0", before):
            break
        time.sleep(1)
    else:
        return Check("restart", False, None, RESTART_WAIT_S, f"{worker}: not back in time")
    error = ""
    while time.monotonic() - started < RESTART_WAIT_S:
        try:
            wait_healthy(endpoint, timeout=max(1.0, RESTART_WAIT_S - (time.monotonic() - started)))
            stats = stream_chat(endpoint, cluster.model, "Say hello.", max_tokens=8)
            if stats.token_chunks > 0:
                seconds = round(time.monotonic() - started, 1)
                detail = f"{worker}: pid {before} -> {after}; a completion works again"
                return Check("restart", True, seconds, RESTART_WAIT_S, detail)
        except SmokeHttpError as exc:
            error = str(exc)
        time.sleep(2)
    return Check("restart", False, None, RESTART_WAIT_S, f"no completion after restart: {error}")


def sampler(conn: Connection) -> Callable[[], str]:
    """``ss -tinH`` on a worker: its sockets' byte counters, before and after a completion."""

    def sample() -> str:
        return conn.run("ss -tinH", timeout=30).stdout

    return sample
