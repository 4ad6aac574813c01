"""The cluster side of smoke: what is checked on the nodes over SSH.

:func:`provisioner.smoke.run.run_smoke` needs only HTTP, the head's log and a sampler per
worker; this module gets those from the nodes (their connections are the caller's) and
adds the checks that need a shell there: every unit active, and a restart (a worker's RPC
server killed, systemd brings it back, a completion works again).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from shlex import quote as q
from typing import Any

from provisioner.postinstall.ssh import Connection
from provisioner.smoke.client import SmokeHttpError, Target, stream_chat, wait_healthy
from provisioner.smoke.report import Check

RESTART_WAIT_S = 120.0
VLLM_RESTART_WAIT_S = 300.0  # vLLM loads its model again (about 40 s on a CPU)


def unit_checks(conns: Mapping[str, Connection], units: Mapping[str, Sequence[str]]) -> list[Check]:
    """Every unit of ``units`` (by hostname) active; the detail counts systemd's restarts
    (a unit that keeps dying is active between deaths) and, for one that is not active,
    its log's last line."""
    checks = []
    for hostname, conn in conns.items():
        for unit in units.get(hostname, ()):
            out = conn.run(
                f"systemctl is-active {q(unit)}; systemctl show -p NRestarts --value {q(unit)}",
                timeout=30,
            ).stdout.split()
            state = out[0] if out else "unknown"
            restarts = out[1] if len(out) > 1 and out[1].isdigit() else "0"
            detail = f"restarted {restarts} time(s) by systemd" if restarts != "0" else ""
            if state != "active":
                detail = f"{detail}; {last_log_line(conn, unit)}".strip("; ")
            checks.append(
                Check(f"unit[{hostname}:{unit}]", state == "active", state, "active", detail)
            )
    return checks


def unit_state(conn: Connection, unit: str) -> tuple[str, int]:
    """(ActiveState, NRestarts) of ``unit``: ``("active", 0)`` for one that runs and never
    died; ``activating`` for a simple service is systemd waiting to restart it."""
    out = conn.run(f"systemctl show -p ActiveState -p NRestarts {q(unit)}", timeout=30).stdout
    fields = dict(line.split("=", 1) for line in out.splitlines() if "=" in line)
    restarts = fields.get("NRestarts", "").strip()
    count = int(restarts) if restarts.isdigit() else 0
    return fields.get("ActiveState", "").strip() or "unknown", count


def death_watch(conn: Connection, unit: str) -> Callable[[], str | None]:
    """A check to call while waiting on ``unit``'s server: None while the process that was
    running at the start runs on, else why not (systemd restarted it, or it is down), with
    its log's last error line. A server that dies while it loads fails at once, not after
    the whole wait."""
    _, before = unit_state(conn, unit)

    def died() -> str | None:
        state, now = unit_state(conn, unit)
        if state == "active" and now <= before:
            return None
        why = f"restarted {now - before} time(s) by systemd" if now > before else state
        said = last_log_line(conn, unit) or "no error logged"
        return f"{unit} {why} while its server loaded: {said}"

    return died


def last_log_line(conn: Connection, unit: str) -> str:
    """The last line that names an error in the unit's log file (or its journal)."""
    log = f"/var/log/{unit.removesuffix('.service')}.log"
    command = (
        f"{{ test -f {q(log)} && cat {q(log)} || journalctl -u {q(unit)} -n 200 --no-pager; }}"
        " 2>/dev/null"
        " | grep -E 'Error|error|ERROR' | tail -n 1"
    )
    return conn.run(command, timeout=30).stdout.strip()[-300:]


HEAD_LOG = "/var/log/llama-server.log"  # the unit truncates it at each start


def head_log(conn: Connection) -> str:
    """The head's output since it last started."""
    return conn.run(f"cat {HEAD_LOG}", timeout=60).stdout


def restart_check(
    conn: Connection,
    hostname: str,
    unit: str,
    endpoint: Target,
    model: str,
    progress: Any,
    wait_s: float = RESTART_WAIT_S,
) -> Any:
    """Kill ``unit``'s main process on ``hostname``: systemd brings it back and a
    completion from ``endpoint`` works again."""

    def main_pid() -> str:
        return conn.run(f"systemctl show -p MainPID --value {q(unit)}", timeout=30).stdout.strip()

    before = main_pid()
    if not before.isdigit() or before == "0":
        return Check("restart", False, None, wait_s, f"{hostname}: {unit} has no main process")
    conn.run(f"kill -9 {before}", timeout=30)
    progress(f"smoke: killed {hostname}'s {unit} (pid {before}); waiting for systemd")
    started = time.monotonic()
    after = before
    while time.monotonic() - started < wait_s:
        active = conn.run(f"systemctl is-active {q(unit)}", timeout=30).stdout.strip()
        after = main_pid()
        if active == "active" and after not in ("", "0", before):
            break
        time.sleep(1)
    else:
        return Check("restart", False, None, wait_s, f"{hostname}: {unit} not back in time")
    error = ""
    while time.monotonic() - started < wait_s:
        try:
            wait_healthy(endpoint, timeout=max(1.0, wait_s - (time.monotonic() - started)))
            stats = stream_chat(endpoint, model, "Say hello.", max_tokens=8)
            if stats.token_chunks > 0:
                seconds = round(time.monotonic() - started, 1)
                detail = f"{hostname}: {unit} pid {before} -> {after}; a completion works again"
                return Check("restart", True, seconds, wait_s, detail)
        except SmokeHttpError as exc:
            error = str(exc)
        time.sleep(2)
    return Check("restart", False, None, wait_s, f"no completion after restart: {error}")


def sampler(conn: Connection) -> Callable[[], str]:
    """``ss -tinH`` on a worker: its sockets' byte counters, before and after a completion."""

    def sample() -> str:
        return conn.run("ss -tinH", timeout=30).stdout

    return sample
