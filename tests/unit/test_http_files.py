from __future__ import annotations

from pathlib import Path

import pytest

from provisioner.boot.http_files import (
    FileAreas,
    RangeNotSatisfiable,
    media_type,
    parse_range,
    plan_response,
)


@pytest.mark.parametrize(
    ("header", "size", "expected"),
    [
        ("bytes=0-99", 1000, (0, 100)),
        ("bytes=100-", 1000, (100, 900)),
        ("bytes=-100", 1000, (900, 100)),
        ("bytes=-5000", 1000, (0, 1000)),
        ("bytes=990-2000", 1000, (990, 10)),
        ("bytes=0-0", 1, (0, 1)),
        ("bytes=0-1,5-9", 1000, None),  # several ranges: whole file
        ("items=0-1", 1000, None),
        ("bytes=abc", 1000, None),
        ("bytes=5-2", 1000, None),
    ],
)
def test_parse_range(header: str, size: int, expected: tuple[int, int] | None) -> None:
    assert parse_range(header, size) == expected


@pytest.mark.parametrize("header", ["bytes=1000-", "bytes=5000-6000", "bytes=-0"])
def test_unsatisfiable_ranges(header: str) -> None:
    with pytest.raises(RangeNotSatisfiable):
        parse_range(header, 1000)


def test_plan_whole_file_has_length_and_validators() -> None:
    plan = plan_response("GET", 1234, 1700000000.0, None)
    headers = dict(plan.headers)
    assert (plan.status, plan.offset, plan.count) == (200, 0, 1234)
    assert headers["Content-Length"] == "1234"
    assert headers["Accept-Ranges"] == "bytes"
    assert headers["Last-Modified"] == "Tue, 14 Nov 2023 22:13:20 GMT"


def test_plan_range_and_head_and_416() -> None:
    plan = plan_response("GET", 1000, 0.0, "bytes=10-19")
    assert (plan.status, plan.offset, plan.count) == (206, 10, 10)
    assert dict(plan.headers)["Content-Range"] == "bytes 10-19/1000"
    head = plan_response("HEAD", 1000, 0.0, None)
    assert head.status == 200 and head.count == 0 and dict(head.headers)["Content-Length"] == "1000"
    bad = plan_response("GET", 1000, 0.0, "bytes=2000-")
    assert bad.status == 416 and dict(bad.headers)["Content-Range"] == "bytes */1000"


def test_if_range_mismatch_sends_the_whole_file() -> None:
    etag = dict(plan_response("GET", 1000, 5.0, None).headers)["ETag"]
    assert plan_response("GET", 1000, 5.0, "bytes=0-9", if_range=etag).status == 206
    assert plan_response("GET", 1000, 5.0, "bytes=0-9", if_range='"other"').status == 200


def test_areas_locate_only_existing_files_inside_their_root(tmp_path: Path) -> None:
    images = tmp_path / "images"
    (images / "discovery").mkdir(parents=True)
    (images / "discovery" / "vmlinuz").write_bytes(b"k")
    (tmp_path / "secret").write_text("x")
    areas = FileAreas({"images": images})
    found = areas.locate("/images/discovery/vmlinuz?mac=52:54:00:00:00:01")
    assert found == (
        "images",
        "discovery/vmlinuz",
        images / "discovery" / "vmlinuz",
        "52:54:00:00:00:01",
    )
    assert areas.locate("/images/discovery/missing") is None
    assert areas.locate("/images/../secret") is None
    assert areas.locate("/images/%2e%2e/secret") is None
    assert areas.locate("/images/discovery") is None
    assert areas.locate("/boot/52:54:00:00:00:01.ipxe") is None


def test_pages_and_text_say_what_they_are() -> None:
    """pip's --find-links skips an index page sent as bytes (seen on a lab node)."""
    assert media_type("index.html") == "text/html"
    assert media_type("requirements.txt") == "text/plain"
    assert media_type("root.squashfs") == "application/octet-stream"
    plan = plan_response("GET", 10, 0.0, None, content_type=media_type("index.html"))
    assert dict(plan.headers)["Content-Type"] == "text/html"
