"""Was every RPC worker used? Two pure readings of real tool output.

1. The head's load log. llama.cpp logs one line per buffer it allocates, named after the
   buffer type; RPC buffer types carry the worker's endpoint. The exact text of build
   b11434 (tests/fixtures/llama/head-rpc2.log)::

       0.00.467.903 I load_tensors:   CPU_Mapped model buffer size =    28.69 MiB
       0.00.467.905 I load_tensors: RPC0[127.0.0.1:50052] model buffer size =    33.82 MiB
       0.00.467.906 I load_tensors: RPC0[127.0.0.1:50053] model buffer size =    58.28 MiB
       0.00.832.318 I llama_kv_cache: RPC0[127.0.0.1:50052] KV buffer size =    12.00 MiB
       0.00.855.072 I sched_reserve: RPC0[127.0.0.1:50052] compute buffer size =    31.05 MiB

   Older builds print ``RPC[host:port]``, with no device number. **b11434 prints these
   lines only at ``-lv 4``** (``--log-verbosity 4``, ``LLAMA_ARG_LOG_VERBOSITY=4``); at the
   default verbosity (3) the head logs none of them. A worker with a ``model`` buffer holds
   layers: :func:`rpc_model_buffers` finds them all.

2. The worker's RPC port saw traffic during the completion: ``ss -tinH`` on the worker,
   sampled before and after, gives each TCP connection's ``bytes_received`` and
   ``bytes_acked``; :func:`traffic_delta` is what the connections on the RPC port moved in
   between (a connection that is new in the second sample counts in full).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

_BUFFER = re.compile(
    r"^(?:[^:\n]*?)(?P<func>[A-Za-z_][\w]*):\s+(?P<buffer>\S+)\s+(?P<kind>[\w ]*?)\s*"
    r"buffer size\s*=\s*(?P<mib>[0-9.]+) MiB",
    re.MULTILINE,
)
_RPC_NAME = re.compile(r"^RPC\d*\[(?P<endpoint>[^\]]+)\]$")


@dataclass(frozen=True)
class BufferLine:
    """One ``... buffer size = N MiB`` line of llama.cpp's log."""

    func: str  # load_tensors, llama_kv_cache, sched_reserve, ...
    buffer: str  # CPU_Mapped, CUDA0, RPC0[10.100.0.32:50052], ...
    kind: str  # model, KV, compute, output, ...
    mib: float
    line: str

    @property
    def rpc_endpoint(self) -> str | None:
        m = _RPC_NAME.match(self.buffer)
        return m.group("endpoint") if m else None


def parse_buffers(log_text: str) -> list[BufferLine]:
    """Every buffer-size line of a llama.cpp log, in order."""
    found = []
    for m in _BUFFER.finditer(log_text):
        end = log_text.find("\n", m.end())
        line = log_text[m.start("func") : end if end >= 0 else len(log_text)].strip()
        kind = m.group("kind").strip()
        found.append(
            BufferLine(m.group("func"), m.group("buffer"), kind, float(m.group("mib")), line)
        )
    return found


def rpc_model_buffers(log_text: str) -> dict[str, list[BufferLine]]:
    """RPC endpoint -> its ``model`` buffer lines (the layers it holds)."""
    by_endpoint: dict[str, list[BufferLine]] = {}
    for b in parse_buffers(log_text):
        if b.rpc_endpoint and b.kind == "model":
            by_endpoint.setdefault(b.rpc_endpoint, []).append(b)
    return by_endpoint


@dataclass(frozen=True)
class TcpConn:
    local: str
    peer: str
    bytes_in: int  # bytes_received
    bytes_out: int  # bytes_acked (what the peer got), else bytes_sent

    @property
    def local_port(self) -> int:
        return int(self.local.rsplit(":", 1)[1])


_ADDR = re.compile(r"^(?:\[[0-9a-fA-F:.%\w]+\]|[0-9.]+|\*|[\w.-]+):(?:\d+|\*)$")
_COUNTER = re.compile(r"\b(bytes_received|bytes_acked|bytes_sent):(\d+)")


def parse_ss(text: str) -> list[TcpConn]:
    """``ss -tinH`` (with or without a state filter) -> connections with their counters."""
    conns: list[TcpConn] = []
    current: tuple[str, str] | None = None
    counters: dict[str, int] = {}

    def flush() -> None:
        if current is not None:
            out = counters.get("bytes_acked", counters.get("bytes_sent", 0))
            conns.append(TcpConn(current[0], current[1], counters.get("bytes_received", 0), out))

    for raw in text.splitlines():
        if not raw.strip():
            continue
        addrs = [tok for tok in raw.split() if _ADDR.match(tok)]
        if not raw[0].isspace() and len(addrs) >= 2:
            flush()
            current, counters = (addrs[0], addrs[1]), {}
        for name, value in _COUNTER.findall(raw):
            counters[name] = int(value)
    flush()
    return conns


def traffic_delta(before: Iterable[TcpConn], after: Iterable[TcpConn], port: int) -> int:
    """Bytes moved (both ways) between two samples on connections whose local port is
    ``port``."""
    old: Mapping[tuple[str, str], TcpConn] = {
        (c.local, c.peer): c for c in before if c.local_port == port
    }
    moved = 0
    for c in after:
        if c.local_port != port:
            continue
        prev = old.get((c.local, c.peer))
        if prev is None:
            moved += c.bytes_in + c.bytes_out
        else:
            moved += max(0, c.bytes_in - prev.bytes_in) + max(0, c.bytes_out - prev.bytes_out)
    return moved
