"""Debian's Prometheus and Ansible pointed at a lab, from the appliance's namespace.

Both run with ``ip netns exec <lab>-prov``: what they send goes to the appliance on
10.99.0.1 or over the lab's bridge to the nodes, or to that namespace's own loopback;
never out of this machine's default route. Prometheus is stopped by its PID.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from provisioner.lab.netns import Namespace
from tests.integration.conftest import stop_process

PROMETHEUS_PORT = 9490  # in the appliance's namespace, on its loopback only


class Prometheus:
    """A prometheus server in ``ns`` whose only job is the appliance's ``http_sd``."""

    def __init__(self, ns: Namespace, folder: Path, appliance: str, token_file: Path) -> None:
        self.ns = ns
        self.folder = folder
        self.config = folder / "prometheus.yml"
        self.config.write_text(
            "global: {scrape_interval: 1s, scrape_timeout: 1s}\n"
            "scrape_configs:\n"
            "  - job_name: provisioner\n"
            "    http_sd_configs:\n"
            f"      - url: {appliance}/api/v1/prometheus/targets\n"
            "        refresh_interval: 1s\n"
            # written out: Debian 12's Prometheus (2.42) sends no Authorization otherwise
            f"        authorization: {{type: Bearer, credentials_file: {token_file}}}\n"
        )
        self.log = folder / "prometheus.log"

    @contextmanager
    def running(self) -> Iterator[Prometheus]:
        with self.log.open("wb") as log:
            proc = subprocess.Popen(
                self.ns.argv([
                    "prometheus", f"--config.file={self.config}",
                    f"--web.listen-address=127.0.0.1:{PROMETHEUS_PORT}",
                    f"--storage.tsdb.path={self.folder / 'data'}",
                ]),
                stdout=subprocess.DEVNULL, stderr=log,
            )  # fmt: skip
            try:
                yield self
            finally:
                stop_process(proc)  # `ip netns exec` execs: this PID is prometheus's

    def targets(self) -> list[dict[str, Any]]:
        """The active targets, as Prometheus's API lists them ([] until it answers)."""
        got = self.ns.run(
            [
                "curl",
                "-sf",
                "--max-time",
                "5",
                f"http://127.0.0.1:{PROMETHEUS_PORT}/api/v1/targets",
            ],
            check=False,
        )
        if got.returncode != 0:
            return []
        found: list[dict[str, Any]] = json.loads(got.stdout)["data"]["activeTargets"]
        return found

    def wait_up(self, macs: set[str], timeout: float) -> dict[str, dict[str, Any]]:
        """Wait until the appliance's target and each node's (by ``mac`` label) is up;
        those targets by MAC (the appliance's: ``appliance``)."""
        deadline = time.monotonic() + timeout
        while True:
            up = {str(t["labels"].get("mac", "appliance")): t for t in self.targets()
                  if t["health"] == "up"}  # fmt: skip
            if macs | {"appliance"} <= set(up):
                return up
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"not up after {timeout} s: {sorted(macs | {'appliance'} - set(up))}; "
                    f"targets {self.targets()}\n{self.log.read_text()[-3000:]}"
                )
            time.sleep(0.25)


def ansible(ns: Namespace, folder: Path, *argv: str) -> subprocess.CompletedProcess[str]:
    """An Ansible command (``ansible``, ``ansible-inventory``) in ``ns``, host key checking
    on; no SSH master left behind (ControlMaster off), its files under ``folder``."""
    env = {
        **os.environ,
        "HOME": str(folder),
        "ANSIBLE_LOCAL_TEMP": str(folder / "tmp"),
        "ANSIBLE_HOST_KEY_CHECKING": "True",
        "ANSIBLE_SSH_ARGS": "-o ControlMaster=no",
        "ANSIBLE_PYTHON_INTERPRETER": "auto_silent",
    }
    return subprocess.run(
        ns.argv(argv), capture_output=True, text=True, timeout=180, check=False, env=env
    )


def inventory_script(config: Path, folder: Path) -> Path:
    """`provisioner ansible inventory --script` for ``config``, executable."""
    made = subprocess.run(
        [sys.executable, "-m", "provisioner.cli", "--config", str(config),
         "ansible", "inventory", "--script"],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert made.returncode == 0, made.stderr
    script = folder / "inventory"
    script.write_text(made.stdout)
    script.chmod(0o755)
    return script


def pings(stdout: str) -> dict[str, str]:
    """``ansible -m ping -o`` lines -> host: its result (SUCCESS, UNREACHABLE ...) and
    the ping's answer, e.g. ``SUCCESS pong``."""
    found = {}
    for line in stdout.splitlines():
        host, sep, rest = line.partition(" | ")
        if not sep:
            continue
        status, _, body = rest.partition(" => ")
        try:
            answer = json.loads(body).get("ping", "") if body.startswith("{") else ""
        except json.JSONDecodeError:
            answer = ""
        found[host] = f"{status.split(':')[0].strip()} {answer}".strip()
    return found
