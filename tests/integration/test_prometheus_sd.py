"""Debian's Prometheus finds its targets through the appliance's HTTP service discovery
(`GET /api/v1/prometheus/targets`, with the API token) and scrapes them: the appliance's
own /metrics and each enrolled node's exporter (Debian's prometheus-node-exporter, run
here on a loopback address per node). A node enrolled while Prometheus runs is scraped
within seconds; the time it took is printed. A node still in discovery is no target."""

from __future__ import annotations

import json
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from provisioner.registry import Registry
from provisioner.states import NodeEvent
from tests.integration.conftest import Appliance, free_port, need, stop_process

pytestmark = pytest.mark.root  # the loopback appliance (fast tier: no namespaces)


def enroll(registry: Registry, mac: str, name: str, ip: str) -> None:
    registry.touch_node(mac, ip=ip)
    registry.set_hostname(mac, name)
    registry.set_profile(mac, "generic-cpu")
    for event in (NodeEvent.INVENTORY, NodeEvent.MATCH, NodeEvent.ENROLL):
        registry.transition(mac, event)


def targets(port: int) -> list[dict[str, object]]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/v1/targets", timeout=5) as r:
        found: list[dict[str, object]] = json.load(r)["data"]["activeTargets"]
    return found


def up(port: int) -> dict[str, dict[str, object]]:
    """node label -> its target, for the targets Prometheus scraped successfully."""
    found = {}
    for t in targets(port):
        labels = t["labels"]
        assert isinstance(labels, dict)
        if t["health"] == "up":
            found[str(labels["node"])] = t
    return found


@pytest.fixture
def exporters() -> Iterator[int]:
    """prometheus-node-exporter on 127.0.0.11 and 127.0.0.12, one port: two nodes."""
    need("prometheus-node-exporter")
    port = free_port()
    procs = [
        subprocess.Popen(
            [
                "prometheus-node-exporter",
                f"--web.listen-address=127.0.0.{n}:{port}",
                "--collector.disable-defaults",
                "--collector.cpu",
                "--collector.loadavg",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for n in (11, 12)
    ]
    try:
        yield port
    finally:
        for proc in procs:
            stop_process(proc)


def test_prometheus_scrapes_what_http_sd_names(
    loopback_appliance: Appliance, exporters: int, tmp_path: Path
) -> None:
    need("prometheus")
    app = loopback_appliance
    with app.config.open("a") as cfg:
        cfg.write(f"\n[prometheus]\nnode_exporter_port = {exporters}\n")
    registry = Registry(app.state / "registry.sqlite3")
    enroll(registry, "52:54:00:00:00:11", "node1", "127.0.0.11")
    registry.touch_node("52:54:00:00:00:13", ip="127.0.0.13")  # in discovery: no target
    registry.set_hostname("52:54:00:00:00:13", "node3")
    app.start()

    port = free_port()
    (tmp_path / "prometheus.yml").write_text(
        "global: {scrape_interval: 1s, scrape_timeout: 1s}\n"
        "scrape_configs:\n"
        "  - job_name: provisioner\n"
        "    http_sd_configs:\n"
        f"      - url: {app.base}/api/v1/prometheus/targets\n"
        "        refresh_interval: 1s\n"
        f"        authorization: {{type: Bearer, credentials_file: {app.state / 'api-token'}}}\n"
    )
    log = (tmp_path / "prometheus.log").open("wb")
    prometheus = subprocess.Popen(
        ["prometheus", f"--config.file={tmp_path / 'prometheus.yml'}",
         f"--web.listen-address=127.0.0.1:{port}", f"--storage.tsdb.path={tmp_path / 'data'}"],
        stdout=subprocess.DEVNULL, stderr=log,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        seen: dict[str, dict[str, object]] = {}
        while time.monotonic() < deadline and set(seen) != {"provisioner", "node1"}:
            time.sleep(0.5)
            try:
                seen = up(port)
            except OSError:
                continue
        assert set(seen) == {"provisioner", "node1"}, (tmp_path / "prometheus.log").read_text()
        labels = seen["node1"]["labels"]
        assert isinstance(labels, dict)
        assert labels["profile"] == "generic-cpu" and labels["state"] == "enrolled"
        assert labels["mac"] == "52:54:00:00:00:11" and labels["job"] == "provisioner"
        assert str(seen["node1"]["scrapeUrl"]).startswith(f"http://127.0.0.11:{exporters}/")

        started = time.monotonic()
        enroll(registry, "52:54:00:00:00:12", "node2", "127.0.0.12")
        while time.monotonic() - started < 30 and "node2" not in seen:
            time.sleep(0.2)
            seen = up(port)
        assert "node2" in seen
        print(f"Prometheus scraped a newly enrolled node {time.monotonic() - started:.1f} s after")
        listed = [t["labels"] for t in targets(port)]
        assert "node3" not in {
            str(labels.get("node")) for labels in listed if isinstance(labels, dict)
        }
    finally:
        stop_process(prometheus)
        log.close()
        registry.close()
