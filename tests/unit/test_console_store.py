"""The kept console lines (store.py) and the receiver between datagrams and the registry
(service.py's ConsoleReceiver, fed directly: the UDP socket is tested in
tests/integration/test_console_udp.py)."""

from __future__ import annotations

from pathlib import Path

from provisioner.console.protocol import KernelLine
from provisioner.console.service import ConsoleReceiver
from provisioner.console.store import ConsoleStore, Follower, Record, log_path, tail
from provisioner.metrics import Metrics
from provisioner.records import EventKind
from provisioner.registry import Registry

MAC = "52:54:00:00:00:07"


def records(start: int, count: int) -> list[Record]:
    return [
        Record(float(i), KernelLine(f"line {i}", 6, i, i / 10)) for i in range(start, start + count)
    ]


def test_tail_reads_back_the_last_lines_across_the_rotation(tmp_path: Path) -> None:
    store = ConsoleStore(tmp_path, max_bytes=64 * 1024)
    for batch in range(40):
        store.append(MAC, records(batch * 50, 50))
    current = log_path(tmp_path, MAC)
    older = current.with_name(current.name + ".1")
    assert current.stat().st_size + older.stat().st_size <= 64 * 1024
    assert oct(current.stat().st_mode & 0o777) == "0o600"
    last = tail(tmp_path, MAC, 300)
    assert [r.line.seq for r in last] == list(range(1700, 2000))
    assert last[-1] == records(1999, 1)[0]
    assert tail(tmp_path, "52:54:00:00:00:08", 10) == []
    assert tail(tmp_path, MAC, 0) == []


def test_a_torn_or_foreign_line_is_skipped(tmp_path: Path) -> None:
    store = ConsoleStore(tmp_path)
    store.append(MAC, records(0, 2))
    with log_path(tmp_path, MAC).open("a") as f:
        f.write('not json\n{"ts": "x"}\n{"ts": 1.0, "text": "torn')
    assert [r.line.text for r in tail(tmp_path, MAC, 10)] == ["line 0", "line 1"]


def test_the_follower_sees_new_lines_and_follows_a_rotation(tmp_path: Path) -> None:
    store = ConsoleStore(tmp_path, max_bytes=64 * 1024)
    store.append(MAC, records(0, 10))
    follower = Follower(tmp_path, MAC)
    assert follower.poll() == []  # what was there before is tail's
    seen: list[int | None] = []
    for batch in range(1, 30):
        store.append(MAC, records(batch * 100, 100))
        seen += [r.line.seq for r in follower.poll()]
    assert seen == [s for b in range(1, 30) for s in range(b * 100, b * 100 + 100)]
    store.remove(MAC)
    assert not log_path(tmp_path, MAC).exists()


class FakeNodes:
    """node_by_ip and the timeline: a real Registry would do; this counts the look-ups."""

    def __init__(self, registry: Registry):
        self.registry = registry
        self.lookups = 0

    def node_by_ip(self, ip: str):  # type: ignore[no-untyped-def]
        self.lookups += 1
        return self.registry.node_by_ip(ip)

    def events(self, mac: str, *, limit: int = 500):  # type: ignore[no-untyped-def]
        return self.registry.events(mac, limit=limit)

    def add_event(self, mac, kind, detail, *, ts=None):  # type: ignore[no-untyped-def]
        self.registry.add_event(mac, kind, detail, ts=ts)


def test_the_receiver_keeps_known_nodes_lines_and_drops_the_rest(tmp_path: Path) -> None:
    registry = Registry(tmp_path / "registry.db")
    registry.touch_node(MAC, ip="10.0.0.7")
    metrics = Metrics()
    nodes = FakeNodes(registry)
    now = [1000.0]
    receiver = ConsoleReceiver(nodes, ConsoleStore(tmp_path), metrics, clock=lambda: now[0])
    receiver.receive(b"6,0,0,-;Linux version 6.1.0\n", "10.0.0.7")
    receiver.receive(b"6,1,5,-;ordinary\n", "10.0.0.7")
    receiver.receive(b"0,2,7,-;Kernel panic - not syncing: test\n", "10.0.0.7")
    receiver.receive(b"6,0,0,-;from nobody\n", "10.0.0.99")
    receiver.receive(b"\xff\xff", "10.0.0.7")
    assert tail(tmp_path, MAC, 10) == []  # nothing before the flush
    receiver.flush()
    assert [r.line.text for r in tail(tmp_path, MAC, 10)] == [
        "Linux version 6.1.0", "ordinary", "Kernel panic - not syncing: test",
    ]  # fmt: skip
    console = [e for e in registry.events(MAC) if e.kind is EventKind.CONSOLE]
    assert [e.detail["what"] for e in console] == ["boot", "panic"]
    assert sorted(p.name for p in (tmp_path / "console").iterdir()) == [f"{MAC}.log"]
    value = metrics.value
    assert value("provisioner_console_datagrams_total", result="accepted") == 3
    assert value("provisioner_console_datagrams_total", result="unknown-source") == 1
    assert value("provisioner_console_datagrams_total", result="not-text") == 1
    assert value("provisioner_console_lines_total") == 3
    assert nodes.lookups == 2  # one per address: the answer is cached


def test_a_restarted_receiver_does_not_mark_the_same_boot_twice(tmp_path: Path) -> None:
    registry = Registry(tmp_path / "registry.db")
    registry.touch_node(MAC, ip="10.0.0.7")
    registry.add_event(MAC, EventKind.SCRIPT, {"boot": "image"})
    for _ in range(2):  # the appliance restarted mid-boot: a new receiver, same node
        receiver = ConsoleReceiver(registry, ConsoleStore(tmp_path), Metrics())
        receiver.receive(b"6,500,90000000,-;still booting\n", "10.0.0.7")
        receiver.flush()
    console = [e for e in registry.events(MAC) if e.kind is EventKind.CONSOLE]
    assert len(console) == 1
