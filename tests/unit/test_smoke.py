"""Smoke client, pure parts: SSE decoding, the TTFT / tokens-per-second arithmetic, checks
against floors, the report; llama.cpp's buffer lines and ``ss`` counters from real output
captured in tests/fixtures/llama/."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from provisioner.profiles import Smoke
from provisioner.smoke import Check, Floors, Report, Worker, render_table
from provisioner.smoke.rpc import parse_buffers, parse_ss, rpc_model_buffers, traffic_delta
from provisioner.smoke.run import buffer_checks, model_ids, names_model, stream_checks
from provisioner.smoke.stream import Chunk, SseDecoder, measure, parse_chunk

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "llama"


# ---------------------------------------------------------------------------- SSE


def test_sse_events_split_anywhere() -> None:
    stream = b'data: {"a":1}\n\n: keep-alive\n\ndata: {"b":2}\r\n\r\ndata: [DONE]\n\n'
    whole = SseDecoder().feed(stream)
    assert whole == ['{"a":1}', '{"b":2}', "[DONE]"]
    for cut in range(len(stream)):
        d = SseDecoder()
        assert d.feed(stream[:cut]) + d.feed(stream[cut:]) + d.close() == whole


def test_sse_multiline_data_fields_and_unterminated_end() -> None:
    d = SseDecoder()
    assert d.feed(b"event: message\nid: 7\ndata: line one\ndata:line two\n\n") == [
        "line one\nline two"
    ]
    assert d.feed(b"data: tail") == []
    assert d.close() == ["tail"]


def test_parse_chunk_llama_cpp_shapes() -> None:
    first = parse_chunk(
        '{"choices":[{"finish_reason":null,"index":0,"delta":{"role":"assistant","content":null}}],'
        '"model":"gpt-3.5-turbo","object":"chat.completion.chunk"}'
    )
    assert first.text == "" and not first.done
    token = parse_chunk('{"choices":[{"finish_reason":null,"index":0,"delta":{"content":"1,"}}]}')
    assert token.text == "1,"
    thinking = parse_chunk('{"choices":[{"delta":{"reasoning_content":"hmm"}}]}')
    assert thinking.text == "hmm"
    last = parse_chunk(
        '{"choices":[{"finish_reason":"length","index":0,"delta":{}}],'
        '"timings":{"prompt_n":20,"prompt_ms":80.5,"predicted_n":64,"predicted_per_second":41.2},'
        '"usage":{"completion_tokens":64,"prompt_tokens":20,"total_tokens":84}}'
    )
    assert last.finish_reason == "length"
    assert last.timings["predicted_per_second"] == 41.2 and last.usage["completion_tokens"] == 64
    assert parse_chunk("[DONE]").done
    with pytest.raises(ValueError, match="server error"):
        parse_chunk('{"error":{"code":500,"message":"boom"}}')
    with pytest.raises(ValueError):
        parse_chunk("not json")


# ---------------------------------------------------------------------------- arithmetic


def tok(text: str) -> Chunk:
    return Chunk(text=text)


def test_ttft_and_decode_rate() -> None:
    # sent at 10.0; role chunk at 10.1 (no text); first token at 10.5; then 4 more, 0.1 s apart
    arrivals = [(10.1, tok("")), (10.5, tok("a"))]
    arrivals += [(10.5 + 0.1 * i, tok("b")) for i in range(1, 5)]
    arrivals += [(11.0, Chunk(finish_reason="stop", timings={"predicted_per_second": 9.5}))]
    stats = measure(10.0, arrivals, 11.2)
    assert stats.ttft_s == pytest.approx(0.5)
    assert stats.token_chunks == 5
    assert stats.decode_tokens_per_s == pytest.approx(4 / 0.4)  # 4 decode steps in 0.4 s
    assert stats.total_s == pytest.approx(1.2)
    assert stats.text == "abbbb" and stats.finish_reason == "stop"
    assert stats.server_timings["predicted_per_second"] == 9.5


def test_no_rate_from_fewer_than_two_tokens() -> None:
    assert measure(0.0, [], 1.0).ttft_s is None
    one = measure(0.0, [(0.3, tok("x"))], 1.0)
    assert one.ttft_s == pytest.approx(0.3) and one.decode_tokens_per_s is None


@pytest.mark.parametrize(
    ("ttft", "tps", "floors", "ok_ttft", "ok_tps"),
    [
        (0.5, 20.0, Floors(10, 2), True, True),
        (3.0, 20.0, Floors(10, 2), False, True),
        (0.5, 5.0, Floors(10, 2), True, False),
        (0.5, 5.0, Floors(), True, True),  # no floors: present and positive is enough
        (None, None, Floors(), False, False),
    ],
)
def test_stream_checks_against_floors(
    ttft: float | None, tps: float | None, floors: Floors, ok_ttft: bool, ok_tps: bool
) -> None:
    arrivals = []
    if ttft is not None and tps is not None:
        arrivals = [(ttft + i / tps, tok("t")) for i in range(11)]
    checks = {c.name: c for c in stream_checks(measure(0.0, arrivals, 5.0), floors)}
    assert checks["ttft_s"].passed is ok_ttft
    assert checks["decode_tokens_per_s"].passed is ok_tps
    assert checks["ttft_s"].floor == floors.max_ttft_s
    assert checks["decode_tokens_per_s"].floor == floors.min_tokens_per_s
    if tps is not None:
        assert checks["decode_tokens_per_s"].value == pytest.approx(tps)


def test_floors_from_profile() -> None:
    assert Floors.from_profile(Smoke("m", 10, 2)) == Floors(10, 2)


# ---------------------------------------------------------------------------- /v1/models


def test_model_ids_and_names() -> None:
    body = {
        "models": [
            {"name": "/srv/models/SmolLM2.Q4_1.gguf", "model": "/srv/models/SmolLM2.Q4_1.gguf"}
        ],
        "object": "list",
        "data": [{"id": "/srv/models/SmolLM2.Q4_1.gguf", "object": "model"}],
    }
    ids = model_ids(body)
    assert ids == ["/srv/models/SmolLM2.Q4_1.gguf"]
    assert names_model(ids, "SmolLM2.Q4_1")
    assert names_model(ids, "SmolLM2.Q4_1.gguf")
    assert not names_model(ids, "SmolLM2")
    assert names_model(["qwen"], "qwen") and model_ids([]) == []


# ---------------------------------------------------------------------------- buffer lines


def test_buffer_lines_from_a_real_head_log() -> None:
    text = (FIXTURES / "head-rpc2.log").read_text()
    lines = parse_buffers(text)
    kinds = {(b.buffer, b.kind) for b in lines}
    assert ("CPU_Mapped", "model") in kinds
    models = rpc_model_buffers(text)
    assert sorted(models) == ["127.0.0.1:50052", "127.0.0.1:50053"]
    assert all(len(v) == 1 and v[0].mib > 0 for v in models.values())
    line = models["127.0.0.1:50052"][0]
    assert line.line == "load_tensors: RPC0[127.0.0.1:50052] model buffer size =    33.82 MiB"
    assert (line.func, line.mib) == ("load_tensors", 33.82)
    assert models["127.0.0.1:50053"][0].mib == 58.28
    kv = [b for b in lines if b.kind == "KV"]
    assert [b.rpc_endpoint for b in kv] == ["127.0.0.1:50052", "127.0.0.1:50053"]


def test_buffer_line_formats_old_and_new() -> None:
    text = (
        "load_tensors:  RPC[10.100.0.32:50052] model buffer size =  4403.49 MiB\n"
        "load_tensors: RPC0[10.100.0.33:50052] model buffer size =  4403.49 MiB\n"
        "load_tensors:        CUDA0 model buffer size =  4567.01 MiB\n"
        "llama_kv_cache: RPC0[10.100.0.33:50052] KV buffer size =   256.00 MiB\n"
    )
    models = rpc_model_buffers(text)
    assert sorted(models) == ["10.100.0.32:50052", "10.100.0.33:50052"]
    assert models["10.100.0.32:50052"][0].mib == pytest.approx(4403.49)
    assert [b.kind for b in parse_buffers(text)] == ["model", "model", "model", "KV"]


def test_buffer_checks_one_per_worker() -> None:
    text = (FIXTURES / "head-rpc2.log").read_text()
    workers = [Worker("127.0.0.1:50052"), Worker("127.0.0.1:50053"), Worker("127.0.0.1:50054")]
    checks = buffer_checks(text, workers)
    assert [c.passed for c in checks] == [True, True, False]
    assert checks[2].detail == "no RPC model buffer line in the head's log"
    assert isinstance(checks[0].value, float) and checks[0].value > 0


# ---------------------------------------------------------------------------- ss counters


def test_parse_ss_real_output() -> None:
    conns = parse_ss((FIXTURES / "ss-rpc-after.txt").read_text())
    on_port = [c for c in conns if c.local_port == 50052]
    assert on_port and all(c.bytes_in > 0 for c in on_port)


def test_parse_ss_with_a_state_filter_has_no_state_column() -> None:
    plain = parse_ss((FIXTURES / "ss-rpc-after.txt").read_text())
    filtered = parse_ss((FIXTURES / "ss-rpc-after-state.txt").read_text())
    assert [(c.local, c.peer, c.bytes_in, c.bytes_out) for c in filtered] == [
        (c.local, c.peer, c.bytes_in, c.bytes_out) for c in plain
    ]


def test_traffic_delta_from_real_samples() -> None:
    before = parse_ss((FIXTURES / "ss-rpc-before.txt").read_text())
    after = parse_ss((FIXTURES / "ss-rpc-after.txt").read_text())
    assert traffic_delta(before, after, 50052) > 0
    assert traffic_delta(after, after, 50052) == 0
    assert traffic_delta(before, after, 1) == 0


def test_traffic_delta_counts_new_connections_in_full() -> None:
    before = parse_ss("")
    after = parse_ss(
        "ESTAB 0 0 127.0.0.1:50052 127.0.0.1:40000\n"
        "\t cubic bytes_sent:300 bytes_acked:300 bytes_received:700 segs_out:3\n"
    )
    assert traffic_delta(before, after, 50052) == 1000


# ---------------------------------------------------------------------------- report


def test_report_json_and_table() -> None:
    report = Report(
        "lab",
        (
            Check("health", True, 200, 200, "ok"),
            Check("decode_tokens_per_s", False, 4.25, 10.0, "64 token chunks"),
        ),
        {"ttft_s": 0.4},
    )
    data = json.loads(json.dumps(report.to_json()))
    assert data["cluster"] == "lab" and data["passed"] is False
    assert [set(c) for c in data["checks"]] == [{"name", "passed", "value", "floor", "detail"}] * 2
    text = render_table(report)
    assert "decode_tokens_per_s  FAIL  4.250" in text
    assert text.splitlines()[-1] == "smoke lab: FAILED (1 check(s))"
    more = report.with_checks([Check("unit rpc-server@node1", True)])
    assert len(more.checks) == 3 and not Report("x").passed


def test_a_real_llama_cpp_stream() -> None:
    raw = (FIXTURES / "chat-stream.sse").read_bytes()
    d = SseDecoder()
    events = [e for i in range(0, len(raw), 97) for e in d.feed(raw[i : i + 97])] + d.close()
    chunks = [parse_chunk(e) for e in events]
    assert chunks[-1].done
    stats = measure(0.0, [(float(i), c) for i, c in enumerate(chunks)], float(len(chunks)))
    assert stats.token_chunks == stats.usage["completion_tokens"] == 64
    assert stats.server_timings["predicted_n"] == 64
    assert stats.server_timings["predicted_per_second"] > 0
    assert stats.text.startswith("1")
