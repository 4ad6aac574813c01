"""Shared helpers for the side-by-side benchmarks (run on demand, never in CI)."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass


@dataclass
class Figure:
    name: str
    unit: str
    ours: float
    peer: float
    peer_name: str
    higher_is_better: bool = True

    @property
    def ratio(self) -> float:
        if self.higher_is_better:
            return self.ours / self.peer if self.peer else float("inf")
        return self.peer / self.ours if self.ours else float("inf")

    def as_dict(self) -> dict[str, object]:
        return {
            "name": self.name,
            "unit": self.unit,
            "ours": round(self.ours, 3),
            "peer": round(self.peer, 3),
            "peer_name": self.peer_name,
            "ratio": round(self.ratio, 3),
        }


def report(figures: Sequence[Figure], as_json: bool) -> None:
    if as_json:
        print(json.dumps([f.as_dict() for f in figures], indent=2))
        return
    for f in figures:
        print(
            f"{f.name}: ours {f.ours:.1f} {f.unit}, {f.peer_name} {f.peer:.1f} {f.unit}, "
            f"ratio {f.ratio:.2f}x"
        )


def free_port(kind: int = socket.SOCK_STREAM) -> int:
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(port: int, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise TimeoutError(f"nothing listens on 127.0.0.1:{port}")


def stop(proc: subprocess.Popen[bytes]) -> None:
    """Stop a process we started, by PID: TERM, then KILL."""
    if proc.poll() is None:
        os.kill(proc.pid, signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
