"""The front door's pure cores: balance, health, keys, rate limits, the stream tally and
the replica table (no socket, no clock but the one passed in)."""

from __future__ import annotations

import json
from collections import Counter

import pytest

from provisioner.gateway import apikeys, balance, sse
from provisioner.gateway.balance import Candidate, Routing, order
from provisioner.gateway.health import HealthBook
from provisioner.gateway.ratelimit import RateLimiter, retry_after
from provisioner.gateway.replicas import model_list, table
from provisioner.records import Cluster, Node, Served
from provisioner.states import NodeState

# ---------------------------------------------------------------- balance


def simulate(cands: list[Candidate], requests: int, done_every: int = 0) -> Counter[str]:
    """Send ``requests``, each to the first of order(); with ``done_every`` N, every N-th
    request the oldest in flight ends (a steady load); the count per replica."""
    load = {c.id: 0 for c in cands}
    sent: Counter[str] = Counter()
    in_flight: list[str] = []
    for turn in range(requests):
        now = [Candidate(c.id, c.tier, load[c.id], c.decode_tps) for c in cands]
        first = order(now, turn=turn)[0]
        sent[first] += 1
        load[first] += 1
        in_flight.append(first)
        if done_every and turn % done_every == 0:
            gone = in_flight.pop(0)
            load[gone] -= 1
    return sent


def test_equal_replicas_share_in_turn() -> None:
    cands = [Candidate("a/m", 0, 0, 50.0), Candidate("b/m", 0, 0, 50.0)]
    assert [order(cands, turn=t)[0] for t in range(4)] == ["a/m", "b/m", "a/m", "b/m"]


def test_least_outstanding_goes_to_the_idler_replica() -> None:
    cands = [Candidate("a/m", 0, 5, 50.0), Candidate("b/m", 0, 1, 50.0)]
    assert order(cands) == ["b/m", "a/m"]


def test_a_replica_twice_as_fast_holds_about_twice_the_requests_in_flight() -> None:
    cands = [Candidate("fast/m", 0, 0, 100.0), Candidate("slow/m", 0, 0, 50.0)]
    sent = simulate(cands, 300)  # nothing ends: the load is what each holds
    assert sent["fast/m"] == pytest.approx(200, abs=2) and sent["slow/m"] == pytest.approx(
        100, abs=2
    )


def test_a_replica_never_smoked_counts_as_the_median() -> None:
    w = balance.weights([Candidate("a", 0, 0, 10.0), Candidate("b", 0, 0, 30.0),
                         Candidate("c", 0, 0, None)])  # fmt: skip
    assert w == {"a": 10.0, "b": 30.0, "c": 20.0}
    assert balance.weights([Candidate("x", 0, 0, None)]) == {"x": 1.0}


def test_degraded_replicas_come_after_every_serving_one() -> None:
    cands = [Candidate("d/m", 1, 0, 500.0), Candidate("s/m", 0, 9, 5.0)]
    assert order(cands) == ["s/m", "d/m"]


def test_a_session_stays_on_its_replica_and_only_a_lost_replicas_sessions_move() -> None:
    three = [Candidate(f"{n}/m", 0, 0, 50.0) for n in "abc"]
    sessions = [f"user-{i}" for i in range(300)]
    before = {s: order(three, session=s, turn=i)[0] for i, s in enumerate(sessions)}
    again = {s: order(three, session=s, turn=i + 7)[0] for i, s in enumerate(sessions)}
    assert before == again  # the turn (and the load) do not move a session
    assert min(Counter(before.values()).values()) > 60  # and they spread
    two = [c for c in three if c.id != "b/m"]
    after = {s: order(two, session=s)[0] for s in sessions}
    moved = [s for s in sessions if before[s] != after[s]]
    assert moved and all(before[s] == "b/m" for s in moved)


def test_prefix_routing_meets_the_same_replica_unless_it_is_far_busier() -> None:
    cands = [Candidate(f"{n}/m", 0, 0, 50.0) for n in "abcd"]
    first = order(cands, routing=Routing.PREFIX, prefix="system: you are terse")[0]
    for t in range(10):
        assert (
            order(cands, routing=Routing.PREFIX, prefix="system: you are terse", turn=t)[0] == first
        )
    busy = [Candidate(c.id, 0, balance.PREFIX_SLACK + 1 if c.id == first else 0, 50.0)
            for c in cands]  # fmt: skip
    assert order(busy, routing=Routing.PREFIX, prefix="system: you are terse")[0] != first


def test_session_and_prompt_from_the_request() -> None:
    assert balance.session_key({"x-session-id": "s1"}, {"user": "u"}) == "s1"
    assert balance.session_key({}, {"user": "u"}) == "u"
    assert balance.session_key({}, {"user": 3}) is None
    parts = [{"type": "text", "text": "hi"}]
    body = {"messages": [{"role": "system", "content": "be brief"},
                         {"role": "user", "content": parts}]}  # fmt: skip
    assert balance.prompt_prefix(body) == (
        'system:be brief\nuser:[{"text": "hi", "type": "text"}]\n'
    )
    assert balance.prompt_prefix({"prompt": "x" * 2000}) == "x" * balance.PREFIX_CHARS
    assert balance.prompt_prefix({}) is None


# ---------------------------------------------------------------- health


def test_a_refused_connection_drains_at_once_and_two_passed_probes_bring_it_back() -> None:
    book = HealthBook()
    assert book.up("a/m")  # never heard of: up
    assert book.failed("a/m", 1.0, "unreachable", definitive=True)
    assert not book.up("a/m") and book.get("a/m").reason == "unreachable"
    assert not book.passed("a/m", 2.0) and not book.up("a/m")
    assert book.passed("a/m", 3.0) and book.up("a/m") and book.get("a/m").since == 3.0


def test_probes_drain_after_two_failures_in_a_row() -> None:
    book = HealthBook()
    assert not book.failed("a/m", 1.0, "timeout")
    book.passed("a/m", 2.0)  # the run is broken
    assert not book.failed("a/m", 3.0, "timeout")
    assert book.failed("a/m", 4.0, "timeout") and not book.up("a/m")
    book.keep(["b/m"])
    assert book.up("a/m")  # forgotten with its replica


# ---------------------------------------------------------------- keys and rates


def test_a_key_is_kept_as_its_hash_and_checked_in_full() -> None:
    key, token = apikeys.make("ci-bot", ("smol",), 60, now=5.0)
    assert token.startswith(f"pvk-{key.id}-") and token not in json.dumps(key.to_json())
    assert key.hash == apikeys.digest(token) and len(key.hash) == 64
    keys = {key.id: key}
    assert apikeys.verify(keys, token) == key
    assert apikeys.verify(keys, token[:-1] + ("A" if token[-1] != "A" else "B")) is None
    assert apikeys.verify(keys, f"pvk-{key.id}-") is None
    assert apikeys.verify(keys, "sk-other") is None and apikeys.verify(keys, None) is None
    assert key.allows("smol") and not key.allows("big")
    assert apikeys.make("all")[0].allows("anything")


@pytest.mark.parametrize("name", ["", "Upper", "a b", "-x", "x" * 64, "a/b"])
def test_bad_key_names_are_refused(name: str) -> None:
    with pytest.raises(ValueError, match="key name"):
        apikeys.make(name)


def test_rpm_allows_a_burst_then_one_request_per_interval() -> None:
    limits = RateLimiter()
    assert [limits.take("k", 3, 0.0) for _ in range(3)] == [None, None, None]
    wait = limits.take("k", 3, 0.0)
    assert wait == pytest.approx(20.0) and retry_after(wait) == 20
    assert limits.take("k", 3, 19.0) == pytest.approx(1.0)
    assert limits.take("k", 3, 20.0) is None
    assert limits.take("other", 3, 20.0) is None  # keys are apart
    assert retry_after(0.01) == 1


# ---------------------------------------------------------------- the stream tally


def chunk(text: str | None = None, usage: dict[str, int] | None = None) -> bytes:
    delta = {"content": text} if text else {}
    doc: dict[str, object] = {"object": "chat.completion.chunk", "choices": [{"delta": delta}]}
    if usage:
        doc["usage"] = usage
    return f"data: {json.dumps(doc)}\n\n".encode()


def test_a_stream_is_counted_across_any_split_of_its_bytes() -> None:
    body = b"".join([chunk("He"), chunk("llo"), chunk(" there"), chunk(None), b"data: [DONE]\n\n"])
    for size in (1, 7, len(body)):
        tally = sse.Tally(streamed=True)
        for i in range(0, len(body), size):
            tally.feed(body[i : i + size])
        tally.finish()
        assert (tally.tokens, tally.completion_tokens, tally.prompt_tokens) == (3, 3, 0)


def test_usage_the_server_reports_wins() -> None:
    tally = sse.Tally(streamed=True)
    tally.feed(chunk("a") + chunk(None, {"prompt_tokens": 12, "completion_tokens": 9}))
    tally.finish()
    assert (tally.prompt_tokens, tally.completion_tokens) == (12, 9)
    whole = sse.Tally(streamed=False)
    whole.feed(b'{"choices": [], "usage": {"prompt_tokens": 4, ')
    whole.feed(b'"completion_tokens": 2}}')
    whole.finish()
    assert (whole.prompt_tokens, whole.completion_tokens) == (4, 2)


def test_the_error_event_is_what_openai_clients_raise_on() -> None:
    event = sse.error_event("cut", "upstream_cut").decode()
    first, done = event.strip().split("\n\n")
    assert json.loads(first.removeprefix("data: "))["error"]["code"] == "upstream_cut"
    assert done == "data: [DONE]"


# ---------------------------------------------------------------- the table


def node(host: str, ip: str | None, state: NodeState) -> Node:
    return Node(f"52:54:00:00:00:{host[-1]}0", host, state, "p", ip, None, None, 0.0, 0.0)


def test_two_clusters_serving_one_name_are_two_replicas_listed_once() -> None:
    a = Cluster("a", "llama-rpc", "smollm2", "n1", serve=(Served("smol", "smollm2", None, 8080),))
    b = Cluster("b", "llama-rpc", "smollm2", "n2", serve=(Served("smol", "smollm2", None, 8080),))
    v = Cluster("v", "vllm", "q", "n3", serve=(Served("qwen", "q", 0.5, 8001),
                                               Served("smol", "s", 0.3, 8002)))  # fmt: skip
    hidden = Cluster("h", "llama-rpc", "smollm2", "n1", front_door=False)
    heads = {
        "n1": node("n1", "10.0.0.1", NodeState.SERVING),
        "n2": node("n2", "10.0.0.2", NodeState.ENROLLED),  # rebooted: drained
        "n3": node("n3", "10.0.0.3", NodeState.DEGRADED),
    }
    t = table([v, b, a, hidden], heads, {"a": 90.0}, {"a": "ek"})
    assert t.names() == ["qwen", "smol"]
    smol = t.of("smol")
    assert [(r.id, r.url, r.tier, r.decode_tps) for r in smol] == [
        ("a/smol", "http://10.0.0.1:8080", 0, 90.0),
        ("b/smol", "http://10.0.0.2:8080", None, None),
        ("v/smol", "http://10.0.0.3:8002", 1, None),
    ]
    assert smol[0].engine_key == "ek" and "ek" not in repr(smol[0])
    assert [m["id"] for m in model_list(t.names(), 0)["data"]] == ["qwen", "smol"]
