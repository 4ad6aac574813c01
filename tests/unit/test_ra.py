from __future__ import annotations

import struct

import pytest

from provisioner.boot.ra import is_router_solicitation, router_advertisement


def test_router_advertisement_says_no_router_and_no_flags() -> None:
    ra = router_advertisement(bytes.fromhex("525400990001"))
    kind, code, _csum, hop, flags, lifetime, reachable, retrans = struct.unpack(
        "!BBHBBHII", ra[:16]
    )
    assert (kind, code, hop, flags, lifetime, reachable, retrans) == (134, 0, 0, 0, 0, 0, 0)
    assert ra[16:] == bytes((1, 1)) + bytes.fromhex("525400990001")  # source link-layer addr
    with pytest.raises(ValueError):
        router_advertisement(b"\x01")


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (bytes((133, 0, 0, 0, 0, 0, 0, 0)), True),
        (bytes((134, 0, 0, 0, 0, 0, 0, 0)), False),
        (bytes((133, 1, 0, 0, 0, 0, 0, 0)), False),
        (b"\x85", False),
        (b"", False),
    ],
)
def test_only_router_solicitations_are_answered(data: bytes, expected: bool) -> None:
    assert is_router_solicitation(data) is expected
