"""normalize_options() is the TFTP option policy (the path rule, confine(), is pinned in
test_paths.py)."""

from __future__ import annotations

import pytest

from provisioner.boot.tftp import MAX_BLKSIZE, normalize_options

OPTIONS = [
    ({}, {}),
    ({"blksize": "1432"}, {"blksize": "1432"}),  # iPXE
    ({"tsize": "0", "blksize": "1468"}, {"tsize": "0", "blksize": "1468"}),  # curl
    ({"BLKSIZE": "1468", "TSize": "0"}, {"blksize": "1468", "tsize": "0"}),
    ({"blksize": "65464"}, {"blksize": "65464"}),
    ({"blksize": "65536"}, {"blksize": str(MAX_BLKSIZE)}),
    ({"blksize": "4"}, {"blksize": "8"}),
    ({"blksize": "abc"}, {}),
    ({"blksize": "-1"}, {}),
    ({"blksize": "²"}, {}),
    ({"tsize": "x"}, {}),
    ({"timeout": "1", "windowsize": "8", "multicast": ""}, {}),
]


@pytest.mark.parametrize(("requested", "accepted"), OPTIONS)
def test_normalize_options(requested: dict[str, str], accepted: dict[str, str]) -> None:
    assert normalize_options(requested) == accepted
