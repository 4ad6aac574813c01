"""metrics.py: exact values, every known series at 0 from the start, the histograms.

The exposition is read back with prometheus_client's own parser, never by string match."""

from __future__ import annotations

import platform
import re
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from provisioner import __version__
from provisioner.metrics import (
    AREAS,
    BOOT_STEP_BUCKETS,
    COUNTERS,
    DHCP_DROP_REASONS,
    HTTP_REFUSAL_REASONS,
    THROUGHPUT_BUCKETS,
    THROUGHPUT_MIN_BYTES,
    Metrics,
)
from provisioner.records import EventKind
from provisioner.registry import Registry
from provisioner.states import NodeState
from provisioner.timeline import TIMED_STEPS

MAC = "52:54:00:00:00:07"
MIB = 1024 * 1024
BOOT = Path(__file__).resolve().parents[2] / "provisioner" / "boot"


def samples(metrics: Metrics) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    text = metrics.render()
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def sample(metrics: Metrics, name: str, **labels: str) -> float:
    return samples(metrics)[(name, frozenset(labels.items()))]


@pytest.fixture
def registry(tmp_path: Path) -> Registry:
    return Registry(tmp_path / "registry.db")


@pytest.mark.parametrize("amount", [6_804_224, 1, 2**53 - 1, 123_456_789_012])
def test_byte_counts_read_back_exactly(amount: int) -> None:
    metrics = Metrics()
    metrics.inc("provisioner_http_bytes_total", amount, area="images")
    metrics.inc("provisioner_http_bytes_total", 0, area="images")
    assert sample(metrics, "provisioner_http_bytes_total", area="images") == float(amount)
    assert metrics.value("provisioner_http_bytes_total", area="images") == amount


def test_what_prometheus_client_writes_for_6804224_bytes() -> None:
    metrics = Metrics()
    metrics.inc("provisioner_http_bytes_total", 6_804_224, area="images")
    metrics.inc("provisioner_http_files_total", area="images")
    text = metrics.render()
    assert 'provisioner_http_bytes_total{area="images"} 6.804224e+06\n' in text
    assert 'provisioner_http_files_total{area="images"} 1.0\n' in text


def test_every_known_series_is_there_at_zero_from_the_start() -> None:
    found = samples(Metrics())
    for name, spec in COUNTERS.items():
        for values in spec.known:
            assert found[(name, frozenset(zip(spec.labels, values, strict=True)))] == 0
    assert found[("provisioner_ra_sent_total", frozenset())] == 0
    for reason in DHCP_DROP_REASONS:
        assert found[("provisioner_dhcp_dropped_total", frozenset({("reason", reason)}))] == 0
    for reason in HTTP_REFUSAL_REASONS:
        assert found[("provisioner_http_refused_total", frozenset({("reason", reason)}))] == 0
    for step in TIMED_STEPS:
        assert found[("provisioner_boot_step_seconds_count", frozenset({("step", step)}))] == 0
    for area in AREAS:
        key = (
            "provisioner_http_file_throughput_bytes_per_second_count",
            frozenset({("area", area)}),
        )
        assert found[key] == 0
    build = frozenset({("version", __version__), ("python", platform.python_version())})
    assert found[("provisioner_build_info", build)] == 1
    assert not [name for name, _ in found if name.endswith("_created")]


def test_the_dhcp_ports_are_declared_by_the_service() -> None:
    metrics = Metrics()
    metrics.declare("provisioner_dhcp_packets_total", port="67")
    assert sample(metrics, "provisioner_dhcp_packets_total", port="67") == 0


def test_a_wrong_name_or_label_set_is_a_bug_not_a_new_series() -> None:
    metrics = Metrics()
    with pytest.raises(KeyError):
        metrics.inc("provisioner_nonsense_total")
    with pytest.raises(ValueError):
        metrics.inc("provisioner_http_refused_total", why="x")
    with pytest.raises(ValueError):
        metrics.inc("provisioner_http_refused_total")


def test_nodes_by_state_every_state_present(registry: Registry) -> None:
    metrics = Metrics()
    metrics.watch(registry)
    found = samples(metrics)
    for state in NodeState:
        assert found[("provisioner_nodes", frozenset({("state", state.value)}))] == 0
    registry.touch_node(MAC)
    registry.touch_node("52:54:00:00:00:08")
    assert sample(metrics, "provisioner_nodes", state=NodeState.NEW.value) == 2


def test_throughput_is_observed_for_files_big_enough() -> None:
    metrics = Metrics()
    metrics.file_served("images", 50 * MIB, 2.0)  # 26.2 MB/s
    metrics.file_served("images", THROUGHPUT_MIN_BYTES - 1, 0.001)  # too small to say
    metrics.file_served("tftp", 2 * MIB, 0.0)  # no duration: nothing to divide by
    name = "provisioner_http_file_throughput_bytes_per_second"
    assert sample(metrics, f"{name}_count", area="images") == 1
    assert sample(metrics, f"{name}_sum", area="images") == 50 * MIB / 2.0
    assert sample(metrics, f"{name}_bucket", area="images", le="2.5e+07") == 0
    assert sample(metrics, f"{name}_bucket", area="images", le="5e+07") == 1
    assert sample(metrics, f"{name}_count", area="tftp") == 0
    assert sample(metrics, "provisioner_http_files_total", area="images") == 2
    assert sample(metrics, "provisioner_http_bytes_total", area="images") == 51 * MIB - 1
    assert sample(metrics, "provisioner_http_bytes_total", area="tftp") == 2 * MIB


def test_buckets_are_increasing() -> None:
    for buckets in (BOOT_STEP_BUCKETS, THROUGHPUT_BUCKETS):
        assert list(buckets) == sorted(set(buckets))


def test_boot_steps_are_timed_from_the_first_discover(registry: Registry) -> None:
    metrics = Metrics()
    metrics.watch(registry)
    t = 1_800_000_000.0
    registry.add_event(MAC, EventKind.DHCP, {"msg": "discover", "client": "pxe-bios"}, ts=t)
    registry.add_event(MAC, EventKind.DHCP_REPLY, {"msg": "offer"}, ts=t + 0.25)
    registry.add_event(MAC, EventKind.SCRIPT, {"boot": "discovery"}, ts=t + 7)
    registry.add_event(MAC, EventKind.HTTP_FILE, {"file": "discovery@1/vmlinuz"}, ts=t + 9)
    registry.touch_node(MAC)
    registry.store_inventory(MAC, "{}", now=t + 95)
    found = samples(metrics)

    def count(step: str, le: str | None = None) -> float:
        name = "provisioner_boot_step_seconds_" + ("count" if le is None else "bucket")
        labels = {("step", step)} | ({("le", le)} if le else set())
        return found[(name, frozenset(labels))]

    assert [s for s in TIMED_STEPS if count(s)] == ["dhcp", "script", "kernel", "inventory"]
    assert found[("provisioner_boot_step_seconds_sum", frozenset({("step", "inventory")}))] == 95
    assert (count("script", "5.0"), count("script", "10.0")) == (0, 1)
    assert (count("inventory", "90.0"), count("inventory", "120.0")) == (0, 1)
    assert count("inventory", "+Inf") == 1


def test_a_power_on_recorded_by_another_process_starts_the_boot(
    registry: Registry, tmp_path: Path
) -> None:
    metrics = Metrics()
    metrics.watch(registry)
    t = 1_800_000_000.0
    cli = Registry(tmp_path / "registry.db")  # `provisioner enroll --power-cycle`
    cli.add_event(MAC, EventKind.POWER, {"op": "cycle", "ok": True}, ts=t - 60)
    registry.add_event(MAC, EventKind.DHCP, {"msg": "discover", "client": "pxe-bios"}, ts=t)
    registry.add_event(MAC, EventKind.DHCP_REPLY, {"msg": "offer"}, ts=t + 1)
    assert metrics.value("provisioner_boot_step_seconds_sum", step="dhcp") == 61


def test_a_failing_clock_never_fails_the_registry_write(
    registry: Registry, caplog: pytest.LogCaptureFixture
) -> None:
    metrics = Metrics()
    metrics.watch(registry)

    class Broken:
        def feed(self, event: object) -> None:
            raise RuntimeError("boom")

    metrics.clock = Broken()  # type: ignore[assignment]
    registry.add_event(MAC, EventKind.DHCP_REPLY, {})
    assert [e.kind for e in registry.events(MAC)] == [EventKind.DHCP_REPLY]
    assert "boot step timing failed" in caplog.text


def test_each_metrics_has_its_own_registry() -> None:
    a, b = Metrics(), Metrics()
    a.inc("provisioner_ra_sent_total")
    assert (a.value("provisioner_ra_sent_total"), b.value("provisioner_ra_sent_total")) == (1, 0)
    assert a.total("provisioner_ra_sent_total") == 1


def test_parse_back_is_not_fooled_by_label_escaping() -> None:
    metrics = Metrics()
    metrics.inc("provisioner_gateway_broken_total", cluster='a"b\\c\nd', model="m", reason="r")
    families = list(text_string_to_metric_families(metrics.render()))
    broken = next(f for f in families if f.name == "provisioner_gateway_broken")
    assert broken.samples == [
        Sample(
            "provisioner_gateway_broken_total",
            {"cluster": 'a"b\\c\nd', "model": "m", "reason": "r"},
            1.0,
        )
    ]


def test_the_declared_label_values_cover_those_the_code_counts() -> None:
    """A reason added in the code but not here would appear only at its first use."""
    policy = (BOOT / "dhcp_policy.py").read_text()
    code = "\n".join(p.read_text() for p in sorted(BOOT.glob("*.py")))
    quiet = {"release", "decline"}  # dhcp_server.QUIET_OUTCOMES: not drops
    drops = set(re.findall(r'_ignore\(\s*"([^"]+)"', policy)) - quiet
    not_booting = re.findall(r'return "([a-z-]+)" if .* else "([a-z-]+)"', policy)
    drops |= {reason for pair in not_booting for reason in pair}
    drops |= set(re.findall(r'dropped_total", reason="([^"]+)"', code))
    drops |= set(re.findall(r'_drop\(\s*"([^"]+)"', code))
    assert {"not-for-us", "unsupported-arch", "malformed", "internal-error"} <= drops
    assert drops <= set(DHCP_DROP_REASONS)
    refusals = set(re.findall(r'"provisioner_http_refused_total",\s*reason="([^"]+)"', code))
    refusals |= set(re.findall(r'refused\(\s*mac,\s*"([^"]+)"', code))
    refusals |= set(re.findall(r'Refusal\(.*?"([a-z-]+)",\s*"[a-z_]+",?\s*\)', code, re.S))
    assert {"api-token", "body-size", "path", "boot-token"} <= refusals
    assert refusals <= set(HTTP_REFUSAL_REASONS)
