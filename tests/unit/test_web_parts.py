"""The dashboard's pure parts: sessions and CSRF, read policy, the timeline and chart
geometry, the SSE wire format, and the node table's change detection on a real registry."""

from __future__ import annotations

import asyncio
import json
import time
from ipaddress import IPv4Network
from pathlib import Path

from provisioner.records import Event, EventKind
from provisioner.registry import Registry
from provisioner.states import NodeEvent
from provisioner.web import session
from provisioner.web.board import Board, Change, event_label, power_label
from provisioner.web.drawing import series, smoke_history, timeline
from provisioner.web.feed import Feed, FeedFull, sse

MAC = "52:54:00:aa:bb:01"
CLUSTER_NET = IPv4Network("10.20.0.0/24")


def test_a_session_lives_its_lifetime_and_a_logout_ends_it() -> None:
    s = session.Sessions(b"k" * 32, lifetime_s=60)
    sid = s.open(1000.0)
    assert s.valid(sid, 1059.0)
    assert not s.valid(sid, 1060.0)  # expired, and forgotten
    assert len(s) == 0
    sid = s.open(2000.0)
    s.close(sid)
    assert not s.valid(sid, 2000.0)
    assert not s.valid("made-up", 2000.0) and not s.valid(None, 2000.0)


def test_sessions_are_bounded_the_oldest_going_first() -> None:
    s = session.Sessions(b"k" * 32, lifetime_s=60, limit=3)
    sids = [s.open(0.0) for _ in range(4)]
    assert not s.valid(sids[0], 1.0)
    assert all(s.valid(sid, 1.0) for sid in sids[1:])


def test_the_csrf_token_belongs_to_its_session_and_secret() -> None:
    s = session.Sessions(b"a" * 32, 60)
    other = session.Sessions(b"b" * 32, 60)
    one, two = s.open(0.0), s.open(0.0)
    assert s.csrf_ok(one, s.csrf(one))
    assert not s.csrf_ok(one, s.csrf(two))
    assert not s.csrf_ok(one, other.csrf(one))
    assert not s.csrf_ok(one, "") and not s.csrf_ok(None, s.csrf(one))


def test_login_key_and_cookie_flags() -> None:
    assert session.key_ok(" tok-123 \n", "tok-123")
    assert not session.key_ok("tok-12", "tok-123") and not session.key_ok("", "tok-123")
    assert not session.key_ok("x", "")  # no token configured: nobody logs in
    cookie = session.cookie_header("abc", 3600)
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie and "Max-Age=3600" in cookie
    assert "Max-Age=0" in session.cleared_cookie()


def test_who_reads_without_a_login() -> None:
    assert session.may_read("cluster", "10.20.0.57", CLUSTER_NET)
    assert session.may_read("cluster", "127.0.0.1", CLUSTER_NET)
    assert not session.may_read("cluster", "192.168.1.9", CLUSTER_NET)
    assert not session.may_read("cluster", "not-an-address", CLUSTER_NET)
    assert session.may_read("open", "192.168.1.9", CLUSTER_NET)
    assert not session.may_read("login", "127.0.0.1", CLUSTER_NET)


def test_same_origin() -> None:
    assert session.same_origin(None, "10.20.0.1:8080")
    assert session.same_origin("http://10.20.0.1:8080", "10.20.0.1:8080")
    assert not session.same_origin("http://evil.example", "10.20.0.1:8080")
    assert not session.same_origin("null", "10.20.0.1:8080")


def ev(ts: float, kind: EventKind, **detail: str | int | float | bool | None) -> Event:
    return Event(MAC, ts, kind, detail)


def test_the_timeline_draws_the_last_boot_its_steps_and_failures() -> None:
    old_boot = [ev(10.0, EventKind.DHCP, msg="discover"), ev(11.0, EventKind.DHCP_REPLY)]
    events = [
        *old_boot,
        ev(100.0, EventKind.POWER, op="cycle", ok=True),
        ev(104.0, EventKind.DHCP, msg="discover"),
        ev(105.0, EventKind.DHCP_REPLY),
        ev(106.0, EventKind.SCRIPT, boot="image"),
        ev(108.0, EventKind.HTTP_FILE, file="images/x@1/vmlinuz"),
        ev(112.0, EventKind.HTTP_FILE, file="images/x@1/initrd"),
        ev(130.0, EventKind.KEYS),
        ev(131.0, EventKind.INVENTORY),
        ev(132.0, EventKind.STATE, to="failed", reason="post-install: driver"),
    ]
    steps = [
        {"run": "r1", "step": "driver", "status": "failed", "seconds": 5.0, "ts": 140.0},
        {"run": "r0", "step": "base", "status": "changed", "seconds": 2.0, "ts": 50.0},  # before
    ]
    t = timeline(events, steps)
    assert t.start == 100.0  # the power-on, not the old boot's DHCP
    labels = [b.label for b in t.bars]
    assert labels[:6] == ["dhcp", "image", "kernel", "initrd", "keys", "ready"]
    assert "base" not in labels  # a step of an earlier boot
    dhcp = t.bars[0]
    assert (dhcp.start, dhcp.seconds, dhcp.failed) == (0.0, 5.0, False)  # power-on to DHCP
    keys = next(b for b in t.bars if b.label == "keys")
    assert (keys.start, keys.seconds) == (12.0, 18.0)  # initrd at +12 s, keys at +30 s
    failed = [b.label for b in t.bars if b.failed]
    assert failed == ["state failed", "driver"]
    assert t.span == 40.0  # the driver step ended at +40 s
    for b in t.bars:
        assert 0.0 <= b.x <= 99.5 and b.width > 0.0 and b.x + b.width <= 100.0 + 1e-9


def test_no_boot_no_bars() -> None:
    t = timeline([], [])
    assert t.bars == () and t.span == 0.0


def test_smoke_history_reads_each_runs_figures() -> None:
    def row(run: str, step: str, value: object, ts: float, status: str = "ok") -> dict[str, object]:
        return {"run": run, "step": step, "status": status, "ts": ts,
                "output": json.dumps({"value": value})}  # fmt: skip

    steps = [
        row("smoke-2", "smoke:ttft_s", 0.4, 20.0),
        row("smoke-2", "smoke:decode_tokens_per_s", 90.5, 20.0),
        row("smoke-1", "smoke:ttft_s", 0.5, 10.0),
        row("smoke-1", "smoke:decode_tokens_per_s", None, 10.0, "failed"),
        {"run": "pi-1", "step": "driver", "status": "changed", "ts": 5.0, "output": "x"},
    ]
    points = smoke_history(steps)
    assert [(p.run, p.ttft_s, p.tokens_per_s, p.passed) for p in points] == [
        ("smoke-1", 0.5, None, False),
        ("smoke-2", 0.4, 90.5, True),
    ]
    s = series([p.tokens_per_s for p in points], 200, 100)
    assert len(s.dots) == 1 and s.low < 90.5 < s.high
    s = series([1.0, None, 3.0], 200, 100, pad=0)
    assert s.points == "0.0,100.0 200.0,0.0"
    assert series([None], 200, 100).points == ""


def test_the_sse_wire_format() -> None:
    assert sse("node", {"a": "x\ny"}) == b'event: node\ndata: {"a":"x\\ny"}\n\n'
    assert sse("snapshot", [], retry_ms=2000).startswith(b"retry: 2000\nevent: snapshot\n")


def test_event_and_power_labels() -> None:
    assert event_label("state", {"to": "failed"}) == ("state failed", True)
    assert event_label("http-file", {"file": "images/a@1/vmlinuz?mac=x"}) == (
        "fetched vmlinuz",
        False,
    )
    assert event_label("power", {"op": "cycle", "ok": False}) == ("power cycle failed", True)
    assert power_label(None, None, None) == "-"
    assert power_label("ipmi://bmc1", "cycle", True) == "ipmi (cycle ok)"
    assert power_label("bogus:", None, None) == "invalid"


def test_the_board_reads_only_when_something_was_committed(registry_location: Path | str) -> None:
    path = registry_location
    writer = Registry(path)
    writer.touch_node(MAC, ip="10.20.0.100")
    board = Board(path, label_accelerators=lambda doc: "acc")
    first = board.refresh()
    assert [(c.kind, c.mac, c.row.state if c.row else None) for c in first] == [
        ("node", MAC, "new")
    ]
    assert board.refresh() == []  # nothing committed since
    writer.add_event(MAC, EventKind.POWER, {"op": "cycle", "ok": True})
    writer.transition(MAC, NodeEvent.POWER_CYCLE, reason="enroll")
    [change] = board.refresh()
    assert change.row is not None
    assert change.row.state == "enrolling" and change.row.last.startswith("state enrolling")
    writer.set_power(MAC, "ipmi://bmc1")
    writer.add_step("r1", MAC, "driver", "failed", 1, "boom", 2.0)
    [change] = board.refresh()
    assert change.row is not None
    assert change.row.last == "driver failed" and change.row.failed
    assert change.row.power == "ipmi (cycle ok)"
    writer.set_hostname(MAC, "gpu0")  # a change of the node's own columns, no event
    [change] = board.refresh()
    assert change.row is not None and change.row.name == "gpu0"
    writer.forget(MAC)
    assert [c.kind for c in board.refresh()] == ["gone"]
    board.close()
    writer.close()


def test_the_feed_fans_out_and_bounds_its_subscribers(tmp_path: Path) -> None:
    path = tmp_path / "registry.sqlite"
    writer = Registry(path)

    async def scenario() -> None:
        feed = Feed(Board(path, label_accelerators=lambda doc: "-"), max_subscribers=2)
        one = feed.subscribe()
        feed.subscribe()
        try:
            feed.subscribe()
            raise AssertionError("a third subscriber was let in")
        except FeedFull:
            pass
        stream = feed.stream(one, keepalive_s=0.05)
        assert (await anext(stream)).startswith(b"retry: ")  # the (empty) snapshot
        writer.touch_node(MAC)
        await feed.tick()
        data = await anext(stream)
        assert data.startswith(b"event: node\n") and MAC.encode() in data
        assert await anext(stream) == b": keepalive\n\n"
        await feed.stop()  # ends every stream
        assert [chunk async for chunk in stream] == []
        assert feed.subscribers == 1  # the other one never read; this one left

    asyncio.run(scenario())
    writer.close()


class _CountingBoard(Board):
    """A board whose reads are counted and take ``cost`` seconds each."""

    def __init__(self, path: Path, cost: float):
        super().__init__(path, label_accelerators=lambda doc: "-")
        self.cost = cost
        self.reads = 0

    def refresh(self) -> list[Change]:
        self.reads += 1
        time.sleep(self.cost)
        return super().refresh()


def test_the_feed_reads_nothing_while_nobody_follows_and_backs_off_under_load(
    tmp_path: Path,
) -> None:
    path = tmp_path / "registry.sqlite"
    writer = Registry(path)
    writer.touch_node(MAC)

    async def scenario() -> None:
        idle = _CountingBoard(path, cost=0.0)
        feed = Feed(idle, tick_s=0.01)
        feed.start()
        await asyncio.sleep(0.2)
        assert idle.reads == 0  # ~20 ticks, no browser: no read
        queue = feed.subscribe()
        stream = feed.stream(queue)
        snapshot = await anext(stream)  # a new follower starts from a fresh read
        assert MAC.encode() in snapshot and idle.reads >= 1
        await feed.stop()

        slow = _CountingBoard(path, cost=0.05)  # each read 50 ms: the next one 450 ms on
        feed = Feed(slow, tick_s=0.01)
        feed.subscribe()
        feed.start()
        await asyncio.sleep(1.0)
        await feed.stop()
        assert 2 <= slow.reads <= 3, slow.reads  # not ~16 (a read every 60 ms)

    asyncio.run(scenario())
    writer.close()
