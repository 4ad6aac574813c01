"""`provisioner smoke CLUSTER` (thin): prove a cluster serves, and record the verdict.

The work is in :mod:`provisioner.clusters.smoke` (connections, the verdict recorded) and
the cluster's engine (its checks, from :mod:`provisioner.smoke`).
"""

from __future__ import annotations

import argparse
from typing import Any

from provisioner.cli.common import load_cfg, load_cluster, open_registry, print_json, stamped
from provisioner.clusters.engines.base import SmokeOptions
from provisioner.clusters.site import Site
from provisioner.clusters.smoke import floors_for, smoke
from provisioner.smoke.report import render_table
from provisioner.smoke.run import Floors


def cmd_smoke(args: argparse.Namespace) -> int:
    cfg = load_cfg(args)
    site = Site.open(cfg, open_registry(cfg))
    cluster = load_cluster(site.registry, args.cluster)
    floors = floors_for(site, cluster)
    if args.min_tokens_per_s is not None or args.max_ttft_s is not None:
        floors = Floors(
            args.min_tokens_per_s if args.min_tokens_per_s is not None else floors.min_tokens_per_s,
            args.max_ttft_s if args.max_ttft_s is not None else floors.max_ttft_s,
        )
    options = SmokeOptions(
        wait_s=args.wait, restart=args.restart, requests=args.requests,
        concurrency=args.concurrency, min_rpm=args.min_rpm, max_p99_s=args.max_p99_s,
    )  # fmt: skip
    progress = (lambda line: None) if args.json else stamped
    report = smoke(site, cluster, options, floors, progress)
    if args.json:
        print_json(report.to_json())
    else:
        print(render_table(report))
    return 0 if report.passed else 1


def add_smoke_command(sub: Any) -> None:
    smoke = sub.add_parser("smoke", help="prove a cluster serves: health, completion, TTFT, tok/s")
    smoke.add_argument("cluster")
    smoke.add_argument("--json", action="store_true")
    smoke.add_argument(
        "--no-restart", dest="restart", action="store_false",
        help="skip the restart check (kill a worker's RPC server, or the first vLLM server,"
        " and see it come back)",
    )  # fmt: skip
    smoke.add_argument("--min-tokens-per-s", type=float, help="override the profile's floor")
    smoke.add_argument(
        "--wait", type=float, default=300, help="seconds to wait for the head to load (300)"
    )
    smoke.add_argument("--max-ttft-s", type=float, help="override the profile's bound")
    smoke.add_argument(
        "--requests", type=int, default=0,
        help="a load check too: N completions per served model (requests/min, p50/p99)",
    )  # fmt: skip
    smoke.add_argument("--concurrency", type=int, default=4, help="load check: at a time (4)")
    smoke.add_argument("--min-rpm", type=float, help="load check: requests per minute, at least")
    smoke.add_argument("--max-p99-s", type=float, help="load check: p99 latency, at most")
    smoke.set_defaults(func=cmd_smoke)
