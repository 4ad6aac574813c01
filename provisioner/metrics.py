"""The appliance's metrics, on prometheus_client, served at ``/metrics``.

Each :class:`Metrics` has its own ``CollectorRegistry`` (tests build several apps in one
process; the library's global registry is never used). Every series whose label values
are known in advance is there from the start, at 0, so a rate or an alert works before
the first event. The series (labels in braces; values listed are declared at start):

- ``provisioner_build_info{version, python}``: 1;
- ``provisioner_nodes{state}``: nodes in the registry, one series per ``NodeState``;
- ``provisioner_dhcp_packets_total{port}``: datagrams received (the two DHCP ports);
- ``provisioner_dhcp_replies_total{type}``: offer, ack, nak;
- ``provisioner_dhcp_dropped_total{reason}``: :data:`DHCP_DROP_REASONS`;
- ``provisioner_dhcp_quiet_total{kind}``: release, decline (no reply by design); with
  replies and drops, they add up to the packets received;
- ``provisioner_dhcp_registry_failures_total``: lease batches the registry could not write;
- ``provisioner_dhcp_unrecorded_renewals_total``: renewals ACKed meanwhile, for the time
  the registry records;
- ``provisioner_tftp_events_total{kind}``: sent, failed;
- ``provisioner_tftp_requests_total``, ``provisioner_tftp_dropped_total{reason}``
  (:data:`TFTP_DROP_REASONS`): read from the TFTP service at each scrape;
- ``provisioner_http_files_total{area}``, ``provisioner_http_bytes_total{area}``;
- ``provisioner_http_refused_total{reason}``: :data:`HTTP_REFUSAL_REASONS`;
- ``provisioner_events_dropped_total{kind}``: refused, console;
- ``provisioner_console_datagrams_total{result}``: :data:`CONSOLE_RESULTS` (netconsole);
- ``provisioner_console_lines_total``: kernel lines kept (provisioner/console);
- ``provisioner_gateway_requests_total{cluster, model, status}`` and
  ``provisioner_gateway_broken_total{cluster, model, reason}``: as they happen;
- the front door's series: :mod:`provisioner.gateway.stats`;
- ``provisioner_ra_sent_total``;
- ``provisioner_dns_queries_total{kind}``: :data:`DNS_QUERY_KINDS` (the cluster zone's DNS);
- ``provisioner_boot_step_seconds{step}`` (histogram): seconds from a boot's start to
  each step of :data:`provisioner.timeline.TIMED_STEPS` (see ``timeline.BootClock``);
- ``provisioner_http_file_throughput_bytes_per_second{area}`` (histogram): one
  observation per file of at least :data:`THROUGHPUT_MIN_BYTES` handed out.

Counters are floats in prometheus_client, exact for integers up to 2**53: 6,804,224
bytes are written ``6.804224e+06``, which reads back as exactly 6804224.0. The
``*_created`` series prometheus_client adds are left out of the exposition.
"""

from __future__ import annotations

import logging
import platform
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from provisioner import __version__
from provisioner.records import Event, Node
from provisioner.states import NodeState
from provisioner.timeline import TIMED_STEPS, BootClock, PowerOns

log = logging.getLogger(__name__)

AREAS = ("images", "tftp", "artifacts", "models")  # serve.py's FileAreas, routes_files.py
# dhcp_policy's _ignore() reasons and the adapter's own (malformed, internal-error,
# reply-too-large, not-recorded, lease-taken, send-failed); not
# release and decline (dhcp_server.QUIET_OUTCOMES: no reply by design, not drops).
DHCP_DROP_REASONS = (
    "malformed",
    "internal-error",
    "not-a-request",
    "no-message-type",
    "no-hardware-address",
    "unsupported-message",
    "not-pxe",
    "unsupported-arch",
    "not-for-us",
    "relay-outside-subnet",
    "no-free-address",
    "no-requested-address",
    "decline-without-address",
    "decline-not-held",  # a DECLINE of an address another MAC holds
    "inform-without-ciaddr",
    "not-recorded",  # a lease reply whose lease could not be written (disk full ...)
    "lease-taken",  # another serve sharing the registry gave the address first (issue 23)
    "reply-too-large",  # the request's option 57 cannot hold the reply (its option 82 echoed)
    "send-failed",  # the reply's sendto failed (a full send buffer, no route): the client retries
)
DHCP_REPLY_TYPES = ("offer", "ack", "nak")
# limits.Refusal reasons (the middleware), then the routes' own.
HTTP_REFUSAL_REASONS = (
    "api-token",
    "bearer",
    "body-size",
    "json-depth",
    "path",
    "unknown-node",
    "boot-token",
    "boot-address",
    "on-behalf",
    "root-integrity",
)
TFTP_EVENT_KINDS = ("sent", "failed")
# provisioner/console: a datagram kept, or why not (protocol.DROP_REASONS, then the rest).
CONSOLE_RESULTS = (
    "accepted", "oversize", "empty", "not-text", "bad-header", "bad-fragment",
    "unknown-source", "overload",
)  # fmt: skip
# tftp.TftpStats.dropped(): datagrams on port 69 that started no transfer
TFTP_DROP_REASONS = ("malformed", "busy", "stray", "refused", "write-refused")
DNS_QUERY_KINDS = (
    "answered",
    "nodata",
    "nxdomain",
    "forwarded",
    "refused",
    "servfail",
    "notimp",
    "formerr",
    "truncated",
    "dropped",
)

BOOT_STEP_BUCKETS = (1, 2, 5, 10, 20, 30, 45, 60, 90, 120, 180, 300, 450, 600, 900, 1800)
MB = 1_000_000
THROUGHPUT_BUCKETS = tuple(
    n * MB for n in (0.1, 1, 5, 10, 25, 50, 75, 100, 125, 250, 500, 1000, 1250, 2500, 5000)
)  # bytes/s: 125 MB/s is 1 GbE's line rate, 1250 MB/s 10 GbE's
GATEWAY_TTFT_BUCKETS = (0.025, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60)
GATEWAY_TPS_BUCKETS = (1, 2.5, 5, 10, 25, 50, 100, 250, 500, 1000)
THROUGHPUT_MIN_BYTES = 1024 * 1024  # smaller files time the round trip, not the link


@dataclass(frozen=True)
class CounterSpec:
    help: str
    labels: tuple[str, ...] = ()
    known: tuple[tuple[str, ...], ...] = ()  # label values declared at start (at 0)


def _each(values: Iterable[str]) -> tuple[tuple[str, ...], ...]:
    return tuple((v,) for v in values)


COUNTERS: dict[str, CounterSpec] = {
    "provisioner_dhcp_packets_total": CounterSpec(
        "DHCP/PXE datagrams received, by port", ("port",)
    ),
    "provisioner_dhcp_replies_total": CounterSpec(
        "DHCP replies sent, by message type", ("type",), _each(DHCP_REPLY_TYPES)
    ),
    "provisioner_dhcp_dropped_total": CounterSpec(
        "DHCP datagrams dropped, by reason", ("reason",), _each(DHCP_DROP_REASONS)
    ),
    "provisioner_dhcp_quiet_total": CounterSpec(
        "DHCP messages that want no reply (RELEASE, DECLINE), by kind",
        ("kind",),
        (("release",), ("decline",)),
    ),
    "provisioner_dhcp_registry_failures_total": CounterSpec(
        "Batches of DHCP registry writes that failed (a full disk): none of their changes kept"
    ),
    "provisioner_dhcp_unrecorded_renewals_total": CounterSpec(
        "Renewals ACKed while the registry could not record them, for their recorded time only"
    ),
    "provisioner_tftp_events_total": CounterSpec(
        "TFTP transfers, by outcome", ("kind",), _each(TFTP_EVENT_KINDS)
    ),
    "provisioner_http_files_total": CounterSpec(
        "Files served over HTTP, by area", ("area",), _each(AREAS)
    ),
    "provisioner_http_bytes_total": CounterSpec(
        "Bytes of files served over HTTP, by area", ("area",), _each(AREAS)
    ),
    "provisioner_http_refused_total": CounterSpec(
        "HTTP requests refused, by reason", ("reason",), _each(HTTP_REFUSAL_REASONS)
    ),
    "provisioner_events_dropped_total": CounterSpec(
        "Timeline events not recorded (over a node's budget), by kind",
        ("kind",),
        (("refused",), ("console",)),
    ),
    "provisioner_console_datagrams_total": CounterSpec(
        "netconsole datagrams received, by result", ("result",), _each(CONSOLE_RESULTS)
    ),
    "provisioner_console_lines_total": CounterSpec("Kernel lines kept from the nodes' consoles"),
    "provisioner_gateway_requests_total": CounterSpec(
        "Gateway requests, by cluster, served model and status", ("cluster", "model", "status")
    ),
    "provisioner_gateway_broken_total": CounterSpec(
        "Gateway streams cut before their end, by reason", ("cluster", "model", "reason")
    ),
    "provisioner_gateway_errors_total": CounterSpec(
        "Gateway failures, by replica's cluster, served model and kind (gateway/stats.py)",
        ("cluster", "model", "kind"),
    ),
    "provisioner_gateway_retries_total": CounterSpec(
        "Gateway requests sent to another replica after a failure before the first byte",
        ("model",),
    ),
    "provisioner_gateway_key_requests_total": CounterSpec(
        "Gateway requests by API key and served model", ("key", "model")
    ),
    "provisioner_gateway_key_tokens_total": CounterSpec(
        "Gateway tokens by API key, served model and direction (in: prompt, out: completion)",
        ("key", "model", "direction"),
    ),
    "provisioner_dns_queries_total": CounterSpec(
        "DNS queries, by what they got", ("kind",), _each(DNS_QUERY_KINDS)
    ),
    "provisioner_ra_sent_total": CounterSpec(
        "IPv6 router advertisements (lifetime 0) sent to iPXE"
    ),
}
NODES_HELP = "Nodes in the registry, by state"


class Watched(Protocol):
    """What :meth:`Metrics.watch` needs of the registry."""

    on_event: Callable[[Event], None] | None

    def nodes(self) -> list[Node]: ...

    def events(self, mac: str, *, limit: int = ...) -> list[Event]: ...

    def query(self, sql: str, args: Sequence[object] = ...) -> list[dict[str, Any]]: ...


class Metrics:
    """The appliance's series on a registry of their own; :meth:`render` exposes them."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self._counters: dict[str, Counter] = {}
        for name, spec in COUNTERS.items():
            counter = Counter(name, spec.help, spec.labels, registry=self.registry)
            for values in spec.known:
                counter.labels(*values)
            self._counters[name] = counter
        Gauge(
            "provisioner_build_info",
            "The running provisioner's version, and Python's",
            ("version", "python"),
            registry=self.registry,
        ).labels(__version__, platform.python_version()).set(1)
        self.boot_steps = Histogram(
            "provisioner_boot_step_seconds",
            "Seconds from a boot's start (power-on, else its first DHCP DISCOVER) to a step",
            ("step",),
            buckets=BOOT_STEP_BUCKETS,
            registry=self.registry,
        )
        for step in TIMED_STEPS:
            self.boot_steps.labels(step)
        self.throughput = Histogram(
            "provisioner_http_file_throughput_bytes_per_second",
            f"Bytes/s of each file of {THROUGHPUT_MIN_BYTES} bytes or more served, by area",
            ("area",),
            buckets=THROUGHPUT_BUCKETS,
            registry=self.registry,
        )
        for area in AREAS:
            self.throughput.labels(area)
        self.clock: BootClock | None = None
        # The front door's histograms and live gauges (provisioner/gateway/stats.py).
        self.gateway_ttft = Histogram(
            "provisioner_gateway_ttft_seconds",
            "Seconds from a request's arrival to its answer's first byte, by replica",
            ("cluster", "model"), buckets=GATEWAY_TTFT_BUCKETS, registry=self.registry,
        )  # fmt: skip
        self.gateway_tps = Histogram(
            "provisioner_gateway_decode_tokens_per_second",
            "Decode tokens/s of each streamed answer, by replica",
            ("cluster", "model"), buckets=GATEWAY_TPS_BUCKETS, registry=self.registry,
        )  # fmt: skip
        # (cluster, model, requests in flight, up) of each replica, at scrape time.
        self.gateway_view: Callable[[], Iterable[tuple[str, str, int, bool]]] = tuple
        self.registry.register(_GatewayGauges(lambda: self.gateway_view()))

    # ------------------------------------------------------------------ counting

    def inc(self, name: str, amount: float = 1, **labels: str) -> None:
        """Add ``amount`` to a counter of :data:`COUNTERS` (KeyError for another name,
        ValueError for labels other than its own)."""
        counter = self._counters[name]
        (counter.labels(**labels) if labels else counter).inc(amount)

    def counter(self, name: str, **labels: str) -> Callable[[], None]:
        """One series' increment, its labels looked up once (for per-packet counting)."""
        return self._counters[name].labels(**labels).inc

    def declare(self, name: str, **labels: str) -> None:
        """Make a counter's series (at 0) for label values known only at run time."""
        self._counters[name].labels(**labels)

    def file_served(self, area: str, sent: int, seconds: float) -> None:
        """One file handed out: its count, its bytes and (if big enough) its bytes/s."""
        self.inc("provisioner_http_files_total", area=area)
        self.inc("provisioner_http_bytes_total", sent, area=area)
        if sent >= THROUGHPUT_MIN_BYTES and seconds > 0:
            self.throughput.labels(area).observe(sent / seconds)

    # ------------------------------------------------------------------ the registry

    def watch(self, registry: Watched) -> None:
        """Count nodes by state at each scrape, and time boot steps as they are recorded.

        The registry calls :meth:`on_event` under its lock, one event at a time."""
        self.registry.register(_NodeStates(registry.nodes))

        self.clock = BootClock(PowerOns(registry.query))
        registry.on_event = self.on_event

    def on_event(self, event: Event) -> None:
        if self.clock is None:
            return
        try:
            reached = self.clock.feed(event)
        except Exception:  # metrics must never fail the write that recorded the event
            log.exception("boot step timing failed mac=%s event=%s", event.mac, event.kind.value)
            return
        if reached is not None:
            step, seconds = reached
            self.boot_steps.labels(step).observe(seconds)

    def watch_tftp(self, read: Callable[[], tuple[int, Mapping[str, int]]]) -> None:
        """The TFTP service's counters (its thread keeps them), read at each scrape:
        ``read`` returns (well-formed requests, {drop reason: count})."""
        self.registry.register(_TftpCounters(read))

    # ------------------------------------------------------------------ reading

    def value(self, name: str, **labels: str) -> float:
        """A sample's value (0 when the series does not exist)."""
        found = self.registry.get_sample_value(name, labels)
        return 0.0 if found is None else found

    def total(self, name: str) -> float:
        """The sum of a counter's series."""
        return sum(
            s.value for family in self.registry.collect() for s in family.samples if s.name == name
        )

    def exposition(self) -> bytes:
        """The text format (0.0.4) of every series, without the ``*_created`` ones."""
        return generate_latest(_WithoutCreated(self.registry))

    def render(self) -> str:
        return self.exposition().decode()


class _NodeStates(Collector):
    """``provisioner_nodes{state}``: read from the registry at each scrape."""

    def __init__(self, nodes: Callable[[], Iterable[Node]]):
        self.nodes = nodes

    def describe(self) -> Iterable[Metric]:
        return [GaugeMetricFamily("provisioner_nodes", NODES_HELP, labels=("state",))]

    def collect(self) -> Iterable[Metric]:
        counts = dict.fromkeys(NodeState, 0)
        for node in self.nodes():
            counts[node.state] += 1
        family = GaugeMetricFamily("provisioner_nodes", NODES_HELP, labels=("state",))
        for state, n in counts.items():
            family.add_metric((state.value,), n)
        return [family]


class _TftpCounters(Collector):
    def __init__(self, read: Callable[[], tuple[int, Mapping[str, int]]]):
        self.read = read

    def describe(self) -> Iterable[Metric]:
        return []  # collected at scrape time only

    def collect(self) -> Iterable[Metric]:
        requests, dropped = self.read()
        yield CounterMetricFamily(
            "provisioner_tftp_requests", "Well-formed TFTP requests (RRQ, WRQ)", value=requests
        )
        family = CounterMetricFamily(
            "provisioner_tftp_dropped",
            "TFTP datagrams on the listening port that started no transfer, by reason",
            labels=("reason",),
        )
        for reason in TFTP_DROP_REASONS:
            family.add_metric((reason,), dropped.get(reason, 0))
        yield family


class _GatewayGauges(Collector):
    def __init__(self, view: Callable[[], Iterable[tuple[str, str, int, bool]]]):
        self.view = view

    def describe(self) -> Iterable[Metric]:
        return []  # collected at scrape time only

    def collect(self) -> Iterable[Metric]:
        outstanding = GaugeMetricFamily(
            "provisioner_gateway_outstanding",
            "Requests in flight through the gateway, by replica",
            labels=("cluster", "model"),
        )
        up = GaugeMetricFamily(
            "provisioner_gateway_replica_up",
            "1 while a replica takes traffic (its health probes pass)",
            labels=("cluster", "model"),
        )
        for cluster, model, in_flight, is_up in self.view():
            outstanding.add_metric((cluster, model), in_flight)
            up.add_metric((cluster, model), 1.0 if is_up else 0.0)
        yield outstanding
        yield up


class _WithoutCreated(Collector):
    """A registry's families less the ``*_created`` samples (no use to Prometheus 2)."""

    def __init__(self, registry: CollectorRegistry):
        self.registry = registry

    def collect(self) -> Iterator[Metric]:
        for family in self.registry.collect():
            family.samples = [s for s in family.samples if not s.name.endswith("_created")]
            yield family
