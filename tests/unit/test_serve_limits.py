"""serve raises its open-files soft limit (systemd's default, 1024, is a thousand slow
HTTP clients): towards the goal, never past the hard limit, never down."""

from __future__ import annotations

import resource
from collections.abc import Iterator

import pytest

from provisioner.serve import raise_file_limit


@pytest.fixture
def restore() -> Iterator[tuple[int, int]]:
    limits = resource.getrlimit(resource.RLIMIT_NOFILE)
    yield limits
    resource.setrlimit(resource.RLIMIT_NOFILE, limits)


def test_soft_limit_raised_within_the_hard_one(restore: tuple[int, int]) -> None:
    soft, hard = restore
    low = min(512, soft)
    resource.setrlimit(resource.RLIMIT_NOFILE, (low, hard))
    want = low + 100 if hard == resource.RLIM_INFINITY else min(low + 100, hard)
    assert raise_file_limit(want) == want
    assert resource.getrlimit(resource.RLIMIT_NOFILE) == (want, hard)
    assert raise_file_limit(low) == want  # never down
    if hard != resource.RLIM_INFINITY:
        assert raise_file_limit(hard + 1000) == hard  # never past the hard limit
