"""The load check's pure parts (nearest-rank percentiles, the summary, its checks), the
thread runner against a fake request, and the decode arithmetic on vLLM's streams."""

from __future__ import annotations

import threading
import time
from dataclasses import replace
from typing import Any

import pytest

from provisioner.smoke.load import (
    LoadSummary,
    Outcome,
    percentile,
    run_load,
    summarize,
    summary_checks,
)
from provisioner.smoke.stream import SseDecoder, decode_steps, measure, parse_chunk

# ---------------------------------------------------------------------- percentile


@pytest.mark.parametrize(
    ("values", "p", "expected"),
    [
        ([], 50, None),
        ([7.0], 50, 7.0),
        ([7.0], 99, 7.0),
        ([3.0, 1.0, 2.0], 50, 2.0),  # rank ceil(1.5) = 2
        ([1.0, 2.0, 3.0, 4.0], 50, 2.0),  # rank 2: nearest rank never interpolates
        ([1.0, 2.0, 3.0, 4.0], 75, 3.0),
        ([1.0, 2.0, 3.0, 4.0], 76, 4.0),
        ([float(i) for i in range(1, 101)], 99, 99.0),
        ([float(i) for i in range(1, 101)], 100, 100.0),
        ([float(i) for i in range(1, 13)], 99, 12.0),  # 12 requests: p99 is the slowest
        ([float(i) for i in range(1, 13)], 50, 6.0),
        ([5.0, 1.0, 5.0, 1.0], 1, 1.0),
    ],
)
def test_percentile_nearest_rank(values: list[float], p: float, expected: float | None) -> None:
    assert percentile(values, p) == expected


@pytest.mark.parametrize("p", [0, -1, 100.5])
def test_percentile_refuses_a_rank_outside_0_100(p: float) -> None:
    with pytest.raises(ValueError, match="not in"):
        percentile([1.0], p)


# ---------------------------------------------------------------------- summary


def test_summary_figures() -> None:
    outcomes = [Outcome(True, float(i), tokens=10, ttft_s=0.1 * i) for i in range(1, 11)]
    outcomes += [Outcome(False, 0.01, error="POST: 503"), Outcome(False, 0.02, error="POST: 503")]
    s = summarize(outcomes, wall_s=30.0, concurrency=4)
    assert (s.requests, s.ok, s.failed, s.concurrency) == (12, 10, 2, 4)
    assert s.rpm == pytest.approx(20.0)  # 10 completed in half a minute
    assert (s.p50_s, s.p99_s) == (5.0, 10.0)  # failed requests are never timed
    assert s.ttft_p50_s == pytest.approx(0.5)
    assert s.tokens == 100 and s.tokens_per_s == pytest.approx(100 / 30)
    assert s.errors == ("POST: 503",)
    assert s.to_json()["rpm"] == s.rpm


def test_summary_of_nothing_completed() -> None:
    s = summarize([Outcome(False, 1.0, error=f"e{i}") for i in range(5)], 2.0, 2)
    assert (s.ok, s.failed, s.rpm, s.p50_s, s.p99_s, s.tokens) == (0, 5, 0.0, None, None, 0)
    assert s.errors == ("e0", "e1", "e2")  # the first few distinct
    assert summarize([], 0.0, 1).rpm == 0.0


BASE = LoadSummary(
    requests=12, concurrency=4, ok=12, failed=0, wall_s=6.0, rpm=120.0,
    p50_s=1.5, p99_s=2.5, ttft_p50_s=0.2, tokens=768,
)  # fmt: skip


def _summary(**changes: Any) -> LoadSummary:
    return replace(BASE, **changes)


def test_checks_names_values_and_bounds() -> None:
    checks = summary_checks(_summary(), "smollm2", min_rpm=100, max_p99_s=3)
    assert [c.name for c in checks] == [
        "load_rpm[smollm2]",
        "load_p99_s[smollm2]",
        "load_errors[smollm2]",
    ]
    assert all(c.passed for c in checks)
    assert [(c.value, c.floor) for c in checks] == [(120.0, 100), (2.5, 3), (0, 0)]
    assert "12/12 completed in 6.0 s, 4 at a time; 768 tokens" in checks[0].detail
    assert "p50 1.500 s, p99 2.500 s" in checks[1].detail


@pytest.mark.parametrize(
    ("summary", "bounds", "failed"),
    [
        (_summary(rpm=99.9), {"min_rpm": 100}, ["load_rpm[m]"]),
        (_summary(p99_s=3.01), {"max_p99_s": 3}, ["load_p99_s[m]"]),
        (_summary(ok=11, failed=1, errors=("boom",)), {}, ["load_errors[m]"]),
        (
            _summary(ok=0, failed=12, rpm=0.0, p50_s=None, p99_s=None),
            {},
            ["load_rpm[m]", "load_p99_s[m]", "load_errors[m]"],
        ),
        (_summary(rpm=1.0, p99_s=60.0), {}, []),  # no bounds: it only has to work
    ],
)
def test_checks_fail_on_their_own_bound(
    summary: LoadSummary, bounds: dict[str, float], failed: list[str]
) -> None:
    checks = summary_checks(summary, "m", **bounds)
    assert [c.name for c in checks if not c.passed] == failed


def test_errors_check_says_what_failed() -> None:
    checks = summary_checks(_summary(ok=10, failed=2, errors=("POST: 503", "timed out")), "m")
    assert checks[2].value == 2 and checks[2].detail == "POST: 503; timed out"


# ---------------------------------------------------------------------- runner


def test_runner_keeps_at_most_c_in_flight() -> None:
    lock = threading.Lock()
    in_flight, peak, seen = 0, 0, []

    def request(i: int) -> Outcome:
        nonlocal in_flight, peak
        with lock:
            in_flight += 1
            peak = max(peak, in_flight)
            seen.append(i)
        time.sleep(0.02)
        with lock:
            in_flight -= 1
        return Outcome(i % 5 != 4, 0.02, tokens=3, error="" if i % 5 != 4 else f"no {i}")

    s = run_load(request, 12, 4)
    assert peak == 4 and sorted(seen) == list(range(12))
    assert (s.requests, s.ok, s.failed, s.tokens) == (12, 10, 2, 30)
    assert s.errors == ("no 4", "no 9")
    assert 0.06 <= s.wall_s < 2  # 3 rounds of 4
    assert run_load(request, 2, 8).concurrency == 2  # never more threads than requests


# ---------------------------------------------------------------------- vLLM streams

# Captured from vLLM 0.32.0 (SmolLM2-135M, --served-model-name smollm2, "stream_interval":
# 4 in the request), fields it repeats in every chunk (id, object, created, model, index,
# logprobs, token_ids, stop_reason, system_fingerprint) left out.
VLLM_INTERVAL_4 = b"""\
data: {"choices":[{"delta":{"role":"assistant","content":""},"finish_reason":null}]}

data: {"choices":[{"delta":{"content":"1"},"finish_reason":null}]}

data: {"choices":[{"delta":{"content":"2345"},"finish_reason":null}]}

data: {"choices":[{"delta":{"content":"6789"},"finish_reason":null}]}

data: {"choices":[{"delta":{"content":"0123"},"finish_reason":null}]}

data: {"choices":[{"delta":{"content":"456"},"finish_reason":"length"}]}

data: {"choices":[],"usage":{"prompt_tokens":43,"total_tokens":59,"completion_tokens":16}}

data: [DONE]

"""


def test_vllm_stream_with_several_tokens_a_chunk() -> None:
    """``"stream_interval": 4``: usage counts the decode steps, not the chunks."""
    chunks = [parse_chunk(e) for e in SseDecoder().feed(VLLM_INTERVAL_4)]
    stats = measure(0.0, [(float(i), c) for i, c in enumerate(chunks)], 9.0)
    assert stats.text == "1234567890123456" and stats.token_chunks == 5
    assert stats.ttft_s == 1.0 and stats.server_timings == {}
    assert stats.decode_tokens_per_s == pytest.approx(15 / 4)  # 15 tokens after the first


@pytest.mark.parametrize(
    ("chunks", "usage", "finish", "steps"),
    [
        (64, None, "length", 63),  # no usage: one token a chunk
        (64, 64, "length", 63),  # llama.cpp and vLLM, one token a chunk
        (24, 25, "stop", 23),  # the end-of-sequence token is counted, never streamed
        (5, 16, "length", 15),  # vLLM --stream-interval 4
        (5, 17, "stop", 15),
        (10, 3, "length", 9),  # usage that counts less than the chunks is not believed
    ],
)
def test_decode_steps(chunks: int, usage: int | None, finish: str, steps: int) -> None:
    assert decode_steps(chunks, usage, finish) == steps
