"""OpenAI-compatible load-balancing proxies side by side: ours against nginx, vllm-router, LiteLLM.

Two identical fake upstream replicas (bench/gateway_upstream.py, "a" and "b", --tokens
tokens per answer) listen on loopback; each proxy in turn is started in front of both
and measured with the same load:

- added latency: --requests sequential non-streamed POST /v1/chat/completions (small body,
  max_tokens 8) after --warmup ones, over one keep-alive connection of a raw-socket HTTP/1.1
  client (not httpx: its own ~100 us per request would blur the p50). The same run goes
  straight to replica a just before ("direct"); the figure is proxy minus direct, p50/p99 ms.
- throughput: Debian's wrk, --concurrency connections (64) for --seconds, non-streamed and
  again with "stream": true (SSE through the proxy); requests/s, non-2xx and socket errors.
- spread: completions each replica served (its GET /stats), for the sequential run (warm-up
  included) and for the two wrk runs together. One streamed answer is also checked whole
  (its token events, the usage chunk, [DONE]).

Peers: nginx (round-robin upstream, keepalive 64, proxy_buffering off) with one worker
and with `worker_processes auto`; vllm-router 0.1.17 (vLLM's Rust router, PyPI) under each
--vllm-policies; LiteLLM's proxy (PyPI litellm[proxy]) under each --litellm-strategies.
The two PyPI ones live in their own venvs under /var/cache/provisioner/bench/ (made once,
reused). A proxy whose start raises NotImplementedError is reported as skipped; one that
fails is reported with the tail of its log. Figures compare `ours` against each nginx run;
start_ours returns a Started whose headers (its API key) go with every request, wrk's too.
Peers' quirks: LiteLLM refuses to start without a master key (one is made per run and sent
as a Bearer key); vllm-router's cache_aware asks the replicas' vLLM /v1/chat/completions/render
for token ids on each request (the fake upstream answers it) and, the prompt being the same
every time, sends every request to one replica, as LiteLLM's least-busy does sequentially.

The machine this was written on has 2 cores: wrk (1 thread), the proxy and both replicas
share them, so a multi-process proxy (nginx auto) competes with its own load generator and
upstreams; read the throughput figures as "on this box", not as the proxy's ceiling.

Run as root: .venv/bin/python bench/gateway_bench.py [--proxies nginx,vllm-router,litellm,ours]
             [--seconds 10] [--requests 2000] [--json]
Needs Debian's wrk and nginx-light (apt-get installed if missing) and PyPI for the venvs.
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import os
import re
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import Figure, free_port, report, stop, wait_port

ROOT = Path(__file__).resolve().parents[1]
CACHE = Path("/var/cache/provisioner/bench")
VLLM_ROUTER = "0.1.17"
LITELLM = "1.108.7"  # the newest whose [proxy] extra resolves on our PyPI mirror
MODEL = "bench-model"
PROMPT = [{"role": "user", "content": "Say hello to the cluster."}]
BODY = json.dumps({"model": MODEL, "messages": PROMPT, "max_tokens": 8}).encode()
STREAM_BODY = json.dumps(
    {"model": MODEL, "messages": PROMPT, "max_tokens": 8, "stream": True,
     "stream_options": {"include_usage": True}}  # else OpenAI (and LiteLLM) send no usage
)  # fmt: skip
PATH = "/v1/chat/completions"


@dataclass
class Started:
    """What a start function hands back: the process, and headers every request needs."""

    proc: subprocess.Popen[bytes]
    headers: dict[str, str] = field(default_factory=dict)
    log: Path | None = None  # its output, shown when it fails
    ready_timeout: float = 60.0


StartFn = Callable[[list[str], int, Path], "Started | subprocess.Popen[bytes]"]


class RawClient:
    """A minimal HTTP/1.1 keep-alive client on one socket (Content-Length or chunked)."""

    def __init__(self, port: int, headers: dict[str, str] | None = None) -> None:
        self.port = port
        self.extra = "".join(f"{k}: {v}\r\n" for k, v in (headers or {}).items())
        self.sock: socket.socket | None = None
        self.buf = b""

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()
        self.sock, self.buf = None, b""

    def _recv(self) -> None:
        assert self.sock is not None
        data = self.sock.recv(262144)
        if not data:
            raise ConnectionError("connection closed by peer")
        self.buf += data

    def _until(self, sep: bytes) -> bytes:
        while (i := self.buf.find(sep)) < 0:
            self._recv()
        out, self.buf = self.buf[:i], self.buf[i + len(sep) :]
        return out

    def _exact(self, n: int) -> bytes:
        while len(self.buf) < n:
            self._recv()
        out, self.buf = self.buf[:n], self.buf[n:]
        return out

    def request(
        self, method: str, path: str, body: bytes = b""
    ) -> tuple[int, dict[str, str], bytes]:
        head = f"{method} {path} HTTP/1.1\r\nhost: 127.0.0.1:{self.port}\r\n{self.extra}"
        if body:
            head += f"content-type: application/json\r\ncontent-length: {len(body)}\r\n"
        raw = head.encode() + b"\r\n" + body
        for attempt in (0, 1):
            if self.sock is None:
                self.sock = socket.create_connection(("127.0.0.1", self.port), timeout=60)
                self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            try:
                self.sock.sendall(raw)
                return self._response()
            except ConnectionError:  # a kept-alive connection the server had closed
                self.close()
                if attempt:
                    raise
        raise AssertionError("unreachable")

    def _response(self) -> tuple[int, dict[str, str], bytes]:
        lines = self._until(b"\r\n\r\n").decode("latin-1").split("\r\n")
        status = int(lines[0].split(" ", 2)[1])
        headers = {}
        for line in lines[1:]:
            key, _, value = line.partition(":")
            headers[key.strip().lower()] = value.strip()
        if "chunked" in headers.get("transfer-encoding", "").lower():
            parts = []
            while size := int(self._until(b"\r\n").split(b";")[0], 16):
                parts.append(self._exact(size))
                self._exact(2)
            while self._until(b"\r\n"):  # trailers, up to the empty line
                pass
            body = b"".join(parts)
        elif "content-length" in headers:
            body = self._exact(int(headers["content-length"]))
        else:  # delimited by close
            try:
                while True:
                    self._recv()
            except ConnectionError:
                pass
            body, self.buf = self.buf, b""
            headers["connection"] = "close"
        if headers.get("connection", "").lower() == "close":
            self.close()
        return status, headers, body


# -- processes -------------------------------------------------------------------------------


def spawn(argv: list[str], log: Path, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    with open(log, "ab") as out:
        return subprocess.Popen(
            argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env
        )


def tail(log: Path, lines: int = 15) -> str:
    try:
        return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def need(binary: str, package: str) -> str:
    """Path of a Debian binary, apt-get installing its package when missing."""
    found = shutil.which(binary) or shutil.which(binary, path="/usr/sbin:/usr/bin")
    if found is None:
        subprocess.run(["apt-get", "install", "-y", "-q", package], check=True)
        found = shutil.which(binary, path="/usr/sbin:/usr/bin")
    if found is None:
        raise RuntimeError(f"{package} installed no {binary}")
    return found


def venv(name: str, requirement: str) -> Path:
    """A venv under CACHE holding `requirement`, made once (its install time is printed)."""
    path = CACHE / name
    if (path / ".complete").exists():
        return path
    shutil.rmtree(path, ignore_errors=True)
    CACHE.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    base = getattr(sys, "_base_executable", sys.executable)
    subprocess.run([base, "-m", "venv", str(path)], check=True)
    done = subprocess.run(
        [str(path / "bin/pip"), "install", "-q", requirement], capture_output=True, text=True
    )
    if done.returncode != 0:
        shutil.rmtree(path, ignore_errors=True)
        raise RuntimeError(f"pip install {requirement} failed:\n{done.stderr[-2000:]}")
    (path / ".complete").write_text(requirement + "\n")
    print(f"[venv {name}: {time.monotonic() - started:.0f} s]", file=sys.stderr)
    return path


def start_upstream(name: str, port: int, work: Path, tokens: int) -> subprocess.Popen[bytes]:
    argv = [sys.executable, str(Path(__file__).with_name("gateway_upstream.py")),
            "--port", str(port), "--name", name, "--tokens", str(tokens)]  # fmt: skip
    proc = spawn(argv, work / f"upstream-{name}.log")
    wait_port(port)
    return proc


# -- the proxies -------------------------------------------------------------------------------

NGINX_CONF = """
user root;
worker_processes {workers};
pid {work}/nginx.pid;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    client_body_temp_path {work}/tmp;
    proxy_temp_path {work}/tmp;
    fastcgi_temp_path {work}/tmp;
    uwsgi_temp_path {work}/tmp;
    scgi_temp_path {work}/tmp;
    upstream replicas {{
{servers}
        keepalive 64;
    }}
    server {{
        listen 127.0.0.1:{port} reuseport;
        location / {{
            proxy_pass http://replicas;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_buffering off;
        }}
    }}
}}
"""


def start_nginx(upstream_urls: list[str], port: int, workdir: Path, workers: str = "1") -> Started:
    nginx = need("nginx", "nginx-light")
    work = workdir / f"nginx-{workers}"
    (work / "tmp").mkdir(parents=True, exist_ok=True)
    servers = "\n".join(f"        server {u.removeprefix('http://')};" for u in upstream_urls)
    conf = work / "nginx.conf"
    conf.write_text(NGINX_CONF.format(workers=workers, work=work, servers=servers, port=port))
    argv = [nginx, "-p", str(work), "-c", str(conf), "-e", str(work / "error.log"),
            "-g", "daemon off;"]  # fmt: skip
    return Started(spawn(argv, work / "stdout.log"), log=work / "error.log")


def start_vllm_router(
    upstream_urls: list[str], port: int, workdir: Path, policy: str = "cache_aware"
) -> Started:
    env = venv(f"vllm-router-{VLLM_ROUTER}", f"vllm-router=={VLLM_ROUTER}")
    argv = [str(env / "bin/vllm-router"), "--host", "127.0.0.1", "--port", str(port),
            "--worker-urls", *upstream_urls, "--policy", policy,
            "--log-level", "warning"]  # fmt: skip
    log = workdir / f"vllm-router-{policy}.log"
    return Started(spawn(argv, log), log=log)


LITELLM_CONF = """model_list:
{deployments}
router_settings:
  routing_strategy: {strategy}
litellm_settings:
  telemetry: false
general_settings:
  master_key: {key}
"""


def start_litellm(
    upstream_urls: list[str], port: int, workdir: Path, strategy: str = "simple-shuffle"
) -> Started:
    env = venv(f"litellm-{LITELLM}", f"litellm[proxy]=={LITELLM}")
    deployments = "".join(
        f"  - model_name: {MODEL}\n    litellm_params:\n      model: openai/{MODEL}\n"
        f"      api_base: {u}/v1\n      api_key: sk-bench\n"
        for u in upstream_urls
    )
    key = f"sk-{secrets.token_hex(16)}"  # it refuses to start without a master key
    conf = workdir / f"litellm-{strategy}.yaml"
    conf.write_text(LITELLM_CONF.format(deployments=deployments, strategy=strategy, key=key))
    environ = {**os.environ, "LITELLM_LOCAL_MODEL_COST_MAP": "True", "LITELLM_LOG": "ERROR",
               "LITELLM_TELEMETRY": "False", "NO_DOCS": "True"}  # fmt: skip
    argv = [str(env / "bin/litellm"), "--config", str(conf), "--host", "127.0.0.1",
            "--port", str(port), "--num_workers", "1"]  # fmt: skip
    log = workdir / f"litellm-{strategy}.log"
    headers = {"Authorization": f"Bearer {key}"}
    return Started(spawn(argv, log, environ), headers, log=log, ready_timeout=180)


def start_ours(
    upstream_urls: list[str], port: int, workdir: Path
) -> Started | subprocess.Popen[bytes]:
    """`provisioner gateway serve` on 127.0.0.1:port: a registry where two clusters, a and
    b, serve MODEL from heads at the upstreams' addresses (state serving, the same smoke
    figure), and an API key from the registry's own key table; a Started carries it."""
    sys.path.insert(0, str(ROOT))
    from provisioner.gateway import apikeys, source
    from provisioner.records import Cluster, Served
    from provisioner.registry import Registry

    state = workdir / "ours-state"
    state.mkdir(mode=0o700, parents=True, exist_ok=True)
    config = workdir / "ours.toml"
    config.write_text(
        '[network]\ninterface = "lo"\naddress = "127.0.0.1/8"\nmode = "proxy"\n'
        f'[http]\nport = {free_port()}\nbind = "127.0.0.1"\n[paths]\nstate_dir = "{state}"\n'
    )
    registry = Registry(state / "registry.sqlite3")
    for i, url in enumerate(upstream_urls):
        host, _, upstream_port = url.removeprefix("http://").rpartition(":")
        name, mac = "ab"[i], f"52:54:00:be:0c:{i:02x}"
        registry.touch_node(mac, ip=host)
        registry.set_hostname(mac, f"head-{name}")
        registry.execute("UPDATE nodes SET state = 'serving' WHERE mac = ?", [(mac,)])
        served = (Served(MODEL, MODEL, None, int(upstream_port)),)
        cluster = Cluster(name, "llama-rpc", MODEL, f"head-{name}", serve=served,
                          http_port=int(upstream_port))  # fmt: skip
        registry.save_cluster(name, cluster.to_json())
        registry.add_step("bench", mac, "smoke:decode_tokens_per_s", "ok", None,
                          json.dumps({"value": 100.0}), 0.0)  # fmt: skip
    key, token = apikeys.make("bench")
    source.add_key(registry, key)
    registry.close()
    argv = [sys.executable, "-m", "provisioner.cli", "--config", str(config), "--log-level",
            "warning", "gateway", "serve", "--listen", f"127.0.0.1:{port}"]  # fmt: skip
    log = workdir / "ours.log"
    return Started(spawn(argv, log), {"Authorization": f"Bearer {token}"}, log=log)


# -- measuring ---------------------------------------------------------------------------------


@dataclass
class Result:
    name: str
    skipped: str = ""
    p50: float = math.nan  # ms, absolute
    p99: float = math.nan
    direct_p50: float = math.nan
    direct_p99: float = math.nan
    failed: int = 0  # non-200 answers in the latency run
    rps: float = math.nan
    rps_stream: float = math.nan
    errors: str = ""
    spread_seq: tuple[int, int] = (0, 0)
    spread_load: tuple[int, int] = (0, 0)
    stream_check: str = ""
    upstream_log: str = ""  # what the replicas complained of (404s: routes it probes)
    rendered: int = 0  # render/tokenize calls it made to the replicas

    @property
    def added(self) -> tuple[float, float]:
        return self.p50 - self.direct_p50, self.p99 - self.direct_p99


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def latency(port: int, headers: dict[str, str], n: int, warmup: int) -> tuple[float, float, int]:
    """(p50 ms, p99 ms, non-200 answers) of n sequential requests after warmup ones."""
    client = RawClient(port, headers)
    times: list[float] = []
    failed = 0
    try:
        for i in range(warmup + n):
            t0 = time.perf_counter_ns()
            status, _, _ = client.request("POST", PATH, BODY)
            elapsed = (time.perf_counter_ns() - t0) / 1e6
            if i >= warmup:
                times.append(elapsed)
                failed += status != 200
    finally:
        client.close()
    return percentile(times, 0.5), percentile(times, 0.99), failed


def served(ports: list[int], what: str = "requests") -> list[int]:
    """Each replica's count of completions ("requests") or of render/tokenize calls."""
    counts = []
    for port in ports:
        client = RawClient(port)
        try:
            counts.append(int(json.loads(client.request("GET", "/stats")[2])[what]))
        finally:
            client.close()
    return counts


def wrk(
    port: int, headers: dict[str, str], body: str, work: Path, args: argparse.Namespace
) -> tuple[float, str]:
    """(requests/s, error summary) of one wrk run."""
    script = work / "wrk.lua"
    lines = ['wrk.method = "POST"', f"wrk.body = [==[{body}]==]",
             'wrk.headers["Content-Type"] = "application/json"']  # fmt: skip
    lines += [f'wrk.headers["{k}"] = [==[{v}]==]' for k, v in headers.items()]
    script.write_text("\n".join(lines) + "\n")
    argv = [need("wrk", "wrk"), "-t", str(args.wrk_threads), "-c", str(args.concurrency),
            "-d", f"{args.seconds}s", "--timeout", "10s", "-s", str(script),
            f"http://127.0.0.1:{port}{PATH}"]  # fmt: skip
    done = subprocess.run(argv, capture_output=True, text=True, timeout=args.seconds + 60)
    rate = re.search(r"Requests/sec:\s+([\d.]+)", done.stdout)
    if rate is None:
        raise RuntimeError(f"wrk said:\n{done.stdout}{done.stderr}")
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", done.stdout)
    sock = re.search(r"Socket errors: (.*)", done.stdout)
    errors = f"non2xx {non2xx.group(1) if non2xx else 0}"
    if sock:
        errors += f", {sock.group(1)}"
    return float(rate.group(1)), errors


def check_stream(port: int, headers: dict[str, str], tokens: int) -> str:
    """ "ok", or what is wrong with one streamed answer through the proxy."""
    client = RawClient(port, headers)
    try:
        status, head, body = client.request("POST", PATH, STREAM_BODY.encode())
    finally:
        client.close()
    if status != 200:
        return f"HTTP {status}: {body[:200]!r}"
    events = [e.removeprefix("data:").strip() for e in body.decode().split("\n\n") if e.strip()]
    done = events[-1:] == ["[DONE]"]
    chunks = [json.loads(e) for e in events if e.startswith("{")]
    content = sum(bool(c.get("choices") and c["choices"][0].get("delta", {}).get("content"))
                  for c in chunks)  # fmt: skip
    usage = any(c.get("usage") for c in chunks)
    if content == tokens and usage and done and "event-stream" in head.get("content-type", ""):
        return "ok"
    return f"{content}/{tokens} tokens, usage {'yes' if usage else 'no'}, [DONE] {done}"


def wait_ready(port: int, started: Started, log: Path) -> None:
    """Until a completion through the proxy answers 200 (its workers are up)."""
    deadline = time.monotonic() + started.ready_timeout
    last = ""
    while time.monotonic() < deadline:
        if started.proc.poll() is not None:
            raise RuntimeError(f"exited with {started.proc.returncode}:\n{tail(log)}")
        client = RawClient(port, started.headers)
        try:
            status, _, body = client.request("POST", PATH, BODY)
            if status == 200:
                return
            last = f"HTTP {status}: {body[:300]!r}"
        except OSError as e:
            last = str(e)
        finally:
            client.close()
        time.sleep(0.25)
    raise RuntimeError(f"not ready after {started.ready_timeout:.0f} s ({last}):\n{tail(log)}")


def measure(
    name: str, start: StartFn, upstreams: list[int], work: Path, args: argparse.Namespace
) -> Result:
    result = Result(name)
    port = free_port()
    urls = [f"http://127.0.0.1:{p}" for p in upstreams]
    logs = [work / f"upstream-{n}.log" for n in "ab"]
    offsets = [log.stat().st_size for log in logs]
    rendered = sum(served(upstreams, "rendered"))
    try:
        got = start(urls, port, work)
    except NotImplementedError as e:
        result.skipped = f"skipped: {e}"
        return result
    except Exception as e:  # an install that failed: record it and go on
        result.skipped = f"failed to start: {e}"
        return result
    started = got if isinstance(got, Started) else Started(got)
    log = started.log or work / "none.log"
    try:
        wait_ready(port, started, log)
        result.stream_check = check_stream(port, started.headers, args.tokens)
        result.direct_p50, result.direct_p99, _ = latency(
            upstreams[0], {}, args.requests, args.warmup
        )
        c0 = served(upstreams)
        result.p50, result.p99, result.failed = latency(
            port, started.headers, args.requests, args.warmup
        )
        c1 = served(upstreams)
        result.rps, err = wrk(port, started.headers, BODY.decode(), work, args)
        result.rps_stream, err_stream = wrk(port, started.headers, STREAM_BODY, work, args)
        c2 = served(upstreams)
        result.errors = f"{err}; streamed: {err_stream}"
        result.spread_seq = (c1[0] - c0[0], c1[1] - c0[1])
        result.spread_load = (c2[0] - c1[0], c2[1] - c1[1])
    except Exception as e:
        result.skipped = f"failed: {e}"
    finally:
        stop(started.proc)
        result.upstream_log = upstream_said(logs, offsets)
        result.rendered = sum(served(upstreams, "rendered")) - rendered
    return result


def upstream_said(logs: list[Path], offsets: list[int]) -> str:
    """The replicas' log lines since offsets, counted ("404 POST /tokenize x12")."""
    lines: Counter[str] = Counter()
    for log, offset in zip(logs, offsets, strict=True):
        with open(log, "rb") as fh:
            fh.seek(offset)
            text = fh.read().decode(errors="replace")
        lines.update(line.split(": ", 1)[-1] for line in text.splitlines() if line.strip())
    return ", ".join(f"{line} x{n}" for line, n in lines.most_common(8))


# -- the report --------------------------------------------------------------------------------


def variants(args: argparse.Namespace) -> list[tuple[str, StartFn]]:
    chosen = [p.strip() for p in args.proxies.split(",") if p.strip()]
    out: list[tuple[str, StartFn]] = []
    for family in chosen:
        if family == "nginx":
            out += [
                (f"nginx w{w}", functools.partial(start_nginx, workers=w)) for w in ("1", "auto")
            ]
        elif family == "vllm-router":
            out += [(f"vllm-router {p}", functools.partial(start_vllm_router, policy=p))
                    for p in args.vllm_policies.split(",")]  # fmt: skip
        elif family == "litellm":
            out += [(f"litellm {s}", functools.partial(start_litellm, strategy=s))
                    for s in args.litellm_strategies.split(",")]  # fmt: skip
        elif family == "ours":
            out.append(("ours", start_ours))
        else:
            raise SystemExit(f"unknown proxy {family!r}")
    return out


def table(
    direct: tuple[float, float, float, str], results: list[Result], args: argparse.Namespace
) -> str:
    rows = [f"{'proxy':<26} {'+p50 ms':>8} {'+p99 ms':>8} {'req/s':>8} {'req/s SSE':>9} "
            f"{'a/b seq':>11} {'a/b wrk':>13}  stream"]  # fmt: skip
    p50, p99, rps, errors = direct
    rows.append(f"{'direct (replica a)':<26} {p50:>8.3f} {p99:>8.3f} {rps:>8.0f} {'':>9} "
                f"{'':>11} {'':>13}  (absolute ms; wrk {errors})")  # fmt: skip
    notes = []
    for r in results:
        if r.skipped:
            rows.append(f"{r.name:<26} {r.skipped.splitlines()[0]}")
            if "\n" in r.skipped:
                notes.append(f"--- {r.name}:\n{r.skipped}")
            continue
        a50, a99 = r.added
        seq = f"{r.spread_seq[0]}/{r.spread_seq[1]}"
        load = f"{r.spread_load[0]}/{r.spread_load[1]}"
        rows.append(f"{r.name:<26} {a50:>8.3f} {a99:>8.3f} {r.rps:>8.0f} {r.rps_stream:>9.0f} "
                    f"{seq:>11} {load:>13}  {r.stream_check}")  # fmt: skip
        notes.append(f"{r.name}: p50 {r.p50:.3f} / p99 {r.p99:.3f} ms (direct {r.direct_p50:.3f}"
                     f" / {r.direct_p99:.3f}), {r.failed} non-200; wrk {r.errors}")  # fmt: skip
        if r.rendered:
            notes.append(f"  it called the replicas' /tokenize or .../render {r.rendered} times")
        if r.upstream_log:
            notes.append(f"  replicas (both) said: {r.upstream_log}")
    head = (
        f"{args.requests} sequential requests (+{args.warmup} warm-up); "
        f"wrk -t{args.wrk_threads} -c{args.concurrency} -d{args.seconds}s; "
        f"{args.tokens} tokens per answer"
    )
    return "\n".join([head, *rows, "", *notes])


def figures(results: list[Result]) -> list[Figure]:
    ours = next((r for r in results if r.name == "ours" and not r.skipped), None)
    if ours is None:
        return []
    out = []
    for peer in results:
        if not peer.name.startswith("nginx") or peer.skipped:
            continue
        # an added latency at or under 0 (noise) is floored at 1 us so the ratio stays finite
        for label, mine, theirs in (
            ("p50", ours.added[0], peer.added[0]),
            ("p99", ours.added[1], peer.added[1]),
        ):
            out.append(Figure(f"added latency {label}", "ms", max(mine, 0.001), max(theirs, 0.001),
                              peer.name, higher_is_better=False))  # fmt: skip
        out.append(Figure("chat completions/s, c64", "req/s", ours.rps, peer.rps, peer.name))
        out.append(
            Figure(
                "streamed completions/s, c64", "req/s", ours.rps_stream, peer.rps_stream, peer.name
            )
        )
    return out


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--proxies", default="nginx,vllm-router,litellm,ours")
    parser.add_argument("--seconds", type=int, default=10, help="per wrk run")
    parser.add_argument("--requests", type=int, default=2000, help="sequential, for latency")
    parser.add_argument("--warmup", type=int, default=200)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--wrk-threads", type=int, default=1)
    parser.add_argument("--tokens", type=int, default=8, help="per answer, from the replicas")
    parser.add_argument("--vllm-policies", default="cache_aware,round_robin,power_of_two")
    parser.add_argument("--litellm-strategies", default="simple-shuffle,least-busy")
    parser.add_argument("--json", action="store_true", help="figures as JSON; the table to stderr")
    args = parser.parse_args()
    chosen = variants(args)
    need("wrk", "wrk")
    with tempfile.TemporaryDirectory(prefix="pv-gwbench-", dir="/var/tmp") as tmp:
        work = Path(tmp)
        upstreams = [free_port(), free_port()]
        procs = [
            start_upstream(n, p, work, args.tokens) for n, p in zip("ab", upstreams, strict=True)
        ]
        try:
            d50, d99, _ = latency(upstreams[0], {}, args.requests, args.warmup)
            drps, derr = wrk(upstreams[0], {}, BODY.decode(), work, args)
            results = []
            for name, start in chosen:
                print(f"[{name}]", file=sys.stderr, flush=True)
                results.append(measure(name, start, upstreams, work, args))
        finally:
            for proc in procs:
                stop(proc)
    print(
        table((d50, d99, drps, derr), results, args), file=sys.stderr if args.json else sys.stdout
    )
    figs = figures(results)
    if figs or args.json:
        report(figs, args.json)
    else:
        print("no figures: ours was not measured")


if __name__ == "__main__":
    main()
