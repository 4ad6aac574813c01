"""Counters of the boot services, exported in Prometheus' text format at /metrics."""

from __future__ import annotations

import threading
from collections import defaultdict
from collections.abc import Callable, Iterable

Labels = tuple[tuple[str, str], ...]

HELP = {
    "provisioner_dhcp_packets_total": "DHCP/PXE datagrams received, by port and outcome",
    "provisioner_dhcp_replies_total": "DHCP replies sent, by message type",
    "provisioner_dhcp_dropped_total": "DHCP datagrams dropped, by reason",
    "provisioner_tftp_events_total": "TFTP requests and outcomes, by kind",
    "provisioner_http_files_total": "Files served over HTTP, by area",
    "provisioner_http_bytes_total": "Bytes of files served over HTTP, by area",
    "provisioner_http_refused_total": "HTTP requests refused, by reason",
    "provisioner_gateway_requests_total": "Gateway requests, by cluster, served model and status",
    "provisioner_gateway_broken_total": "Gateway streams cut before their end, by reason",
    "provisioner_ra_sent_total": "IPv6 router advertisements (lifetime 0) sent to iPXE",
    "provisioner_nodes": "Nodes in the registry, by state",
}


class Metrics:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts: defaultdict[tuple[str, Labels], float] = defaultdict(float)
        self._gauges: list[Callable[[], Iterable[tuple[str, Labels, float]]]] = []

    def inc(self, name: str, amount: float = 1, **labels: str) -> None:
        key = (name, tuple(sorted(labels.items())))
        with self._lock:
            self._counts[key] += amount

    def value(self, name: str, **labels: str) -> float:
        with self._lock:
            return self._counts.get((name, tuple(sorted(labels.items()))), 0.0)

    def total(self, name: str) -> float:
        with self._lock:
            return sum(v for (n, _), v in self._counts.items() if n == name)

    def add_gauges(self, source: Callable[[], Iterable[tuple[str, Labels, float]]]) -> None:
        """A callable read at each scrape (e.g. node counts from the registry)."""
        self._gauges.append(source)

    def render(self) -> str:
        with self._lock:
            samples = [(n, labels, v, "counter") for (n, labels), v in self._counts.items()]
        for source in self._gauges:
            samples.extend((n, labels, v, "gauge") for n, labels, v in source())
        lines: list[str] = []
        seen: set[str] = set()
        for name, labels, value, kind in sorted(samples, key=lambda s: (s[0], s[1])):
            if name not in seen:
                seen.add(name)
                lines.append(f"# HELP {name} {HELP.get(name, name)}")
                lines.append(f"# TYPE {name} {kind}")
            text = ",".join(f'{k}="{_escape(v)}"' for k, v in labels)
            lines.append(f"{name}{{{text}}} {value:g}" if text else f"{name} {value:g}")
        return "\n".join(lines) + "\n"


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
