"""Reliability bench (issue 20, items 3 and 4): the long runs of the CI checks, with figures.

Needs root (network namespaces). In one segment (tests/integration/reliability.py):

  (a) --packets mutated DHCP/PXE/TFTP datagrams (default 100,000) to ports 67, 4011 and
      69 of `serve` at --rate per second while the scripted node boots: sent and received
      per port, the kernel's drops (RcvbufErrors + InErrors in serve's namespace), every
      outcome counter, whether serve lived and the boot passed, boot time vs a quiet boot;
  (b) --rounds times: a quiet boot, then one under --http-clients slowloris clients and
      --tftp-stalls stalled TFTP transfers: the median ratio, goal <= 2.0.

    sudo .venv/bin/python bench/reliability_bench.py [--packets 100000] [--rate 2000]
        [--http-clients 500] [--tftp-stalls 64] [--rounds 3] [--json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from dataclasses import asdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from tests.integration.reliability import (  # noqa: E402
    booted,
    fuzz_during_boot,
    segment,
    starve_during_boot,
)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--packets", type=int, default=100_000)
    parser.add_argument("--rate", type=float, default=2000.0)
    parser.add_argument("--http-clients", type=int, default=500)
    parser.add_argument("--tftp-stalls", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    result: dict[str, object] = {}
    with tempfile.TemporaryDirectory(prefix="reliability-bench-") as tmp:
        if args.packets:
            with segment(Path(tmp) / "fuzz") as seg:
                fuzz = fuzz_during_boot(seg, args.packets, args.rate)
            result["fuzz"] = {
                "sent": fuzz.sent,
                "received": fuzz.received,
                "kernel_drops": fuzz.kernel_drops,
                "send_seconds": fuzz.seconds,
                "outcomes": fuzz.outcomes,
                "dhcp_unaccounted": fuzz.unaccounted["dhcp"],
                "serve_alive": fuzz.alive,
                "tracebacks": fuzz.tracebacks,
                "boot_ok": booted(fuzz.run),
                "boot_steps": [asdict(s) for s in fuzz.run.steps],
                "boot_seconds": round(fuzz.boot_seconds, 3),
                "quiet_boot_seconds": round(fuzz.baseline_seconds, 3),
            }
        if args.rounds:
            with segment(Path(tmp) / "starve") as seg:
                starve = starve_during_boot(seg, args.http_clients, args.tftp_stalls, args.rounds)
            pairs = zip(starve.starved_seconds, starve.baseline_seconds, strict=True)
            ratios = [s / b for s, b in pairs]
            result["starvation"] = {
                "http_clients": args.http_clients,
                "tftp_stalls": args.tftp_stalls,
                "quiet_boot_seconds": [round(s, 3) for s in starve.baseline_seconds],
                "starved_boot_seconds": [round(s, 3) for s in starve.starved_seconds],
                "median_ratio": round(statistics.median(ratios), 3),
                "goal": 2.0,
                "all_booted": all(booted(r) for r in starve.runs),
                "serve_alive": starve.alive,
                "load": starve.load,
                "steps": [asdict(s) for s in starve.runs[-1].steps],
            }
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        for name, figures in result.items():
            print(f"== {name}")
            for key, value in figures.items():  # type: ignore[attr-defined]
                print(f"  {key}: {value}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
