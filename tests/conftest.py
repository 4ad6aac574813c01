"""Test tiers, and what a missing prerequisite means (a skip here, a failure in CI).

Tiers. Plain ``pytest`` runs the fast tier: the unit tests and the quick loopback
integration tests. A test that needs a slow tier carries its marker (registered in
pyproject.toml) and is deselected unless one of these selects it, explicitly:

- ``--tier all`` (or ``PROVISIONER_TEST_TIERS=all``): every tier. ``scripts/test``, and
  through it ``.ci/run``, pass ``--tier all``.
- ``-m EXPR``: a marker expression replaces the default: ``pytest -m qemu`` runs the QEMU
  tier, ``pytest -m "not vllm"`` runs everything but the vLLM tests.
- Naming a test file or node id: ``pytest tests/e2e/test_lab.py::test_uefi_node_in_full_mode``
  runs that test whatever its tier; a folder (``pytest tests/e2e``) keeps the default.

Opt-in. A test marked ``heavy`` (an image build that takes many minutes on 2 cores: the
NVIDIA layer's DKMS modules, the Ryzen AI layer's kernel, llama.cpp's Vulkan and CUDA
builds) runs only when asked for by
``-m heavy`` or by naming its file; ``--tier all`` (CI) leaves it out.

Prerequisites. A test whose tool, root or fixture folder is missing calls
:func:`unavailable`: it skips with the reason, except under ``CI=true``, where scripts/setup
should have provided it, so it fails. Tests that read ../shared/fixtures/hw carry
``tests.shared_fixtures.needs_hw``; without that folder they skip, and under ``CI=true``
the run stops at collection with an error naming the path.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import NoReturn

import pytest

from tests import shared_fixtures

# Markers of the slow tiers, deselected by default. `root` is not a tier: a fast test may
# need root (the loopback appliance does) and skips without it.
SLOW_TIERS = ("netns", "qemu", "mirror", "llama", "vllm")
OPT_IN = "heavy"  # only with -m heavy or the file named: not even --tier all
TIERS = ("fast", "all")
TIERS_ENV = "PROVISIONER_TEST_TIERS"
_DESELECTED = pytest.StashKey[int]()  # how many the fast tier left out, for the summary


def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in {"1", "true", "yes"}


def unavailable(reason: str) -> NoReturn:
    """Skip for ``reason``; under ``CI=true`` fail instead: scripts/setup provides it there."""
    if in_ci():
        pytest.fail(f"{reason} [CI=true: a missing prerequisite fails, not skips]", pytrace=False)
    pytest.skip(reason)


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--tier",
        choices=TIERS,
        default=None,
        help=f"fast (default): deselect tests marked {', '.join(SLOW_TIERS)}; all: run every "
        f"tier (scripts/test does). Default from ${TIERS_ENV}.",
    )


def _tier(config: pytest.Config) -> str:
    tier = config.getoption("--tier") or os.environ.get(TIERS_ENV, "").strip() or "fast"
    if tier not in TIERS:
        raise pytest.UsageError(f"{TIERS_ENV}={tier!r}: expected one of {', '.join(TIERS)}")
    return str(tier)


def pytest_configure(config: pytest.Config) -> None:
    registered = {line.split(":", 1)[0].strip() for line in config.getini("markers")}
    if unregistered := {*SLOW_TIERS, OPT_IN} - registered:
        raise pytest.UsageError(f"tier markers missing from pyproject.toml: {unregistered}")


def _named_files(config: pytest.Config) -> set[Path]:
    """The files named on the command line (alone or in a node id); folders are not."""
    base = config.invocation_params.dir
    named: set[Path] = set()
    for arg in config.args:
        path = (base / arg.split("::", 1)[0]).resolve()
        if path.is_file():
            named.add(path)
    return named


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    named = _named_files(config)
    if not config.option.markexpr:
        heavy = [i for i in items if i.get_closest_marker(OPT_IN) and i.path.resolve() not in named]
        if heavy:
            config.hook.pytest_deselected(items=heavy)
            items[:] = [i for i in items if i not in heavy]
    if _tier(config) == "fast" and not config.option.markexpr:
        kept: list[pytest.Item] = []
        dropped: list[pytest.Item] = []
        for item in items:
            slow = any(item.get_closest_marker(tier) for tier in SLOW_TIERS)
            if slow and item.path.resolve() not in named:
                dropped.append(item)
            else:
                kept.append(item)
        if dropped:
            config.hook.pytest_deselected(items=dropped)
            items[:] = kept
            config.stash[_DESELECTED] = len(dropped)
    hw = [item for item in items if item.get_closest_marker(shared_fixtures.MARKER)]
    if hw and not shared_fixtures.present():
        if in_ci():
            raise pytest.UsageError(
                f"CI=true: {shared_fixtures.missing()}; {len(hw)} selected tests read it"
            )
        skip = pytest.mark.skip(reason=shared_fixtures.missing())
        for item in hw:
            item.add_marker(skip, append=False)  # its reason before "empty parameter set"


def pytest_report_header(config: pytest.Config) -> str:
    tier = _tier(config)
    if tier == "all" or config.option.markexpr:
        return f"tiers: {'all' if tier == 'all' else '-m ' + repr(config.option.markexpr)}"
    return f"tiers: fast (deselected unless named: {', '.join(SLOW_TIERS)}; --tier all runs them)"


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    dropped = terminalreporter.config.stash.get(_DESELECTED, 0)
    if dropped:
        terminalreporter.write_line(
            f"{dropped} slow-tier tests deselected ({', '.join(SLOW_TIERS)}): "
            "--tier all, -m MARKER, or a file or node id runs them"
        )


def _mounts_under(folder: Path) -> list[str]:
    """Mount points at or below ``folder`` (/proc/self/mountinfo, octal escapes decoded)."""
    try:
        lines = Path("/proc/self/mountinfo").read_text().splitlines()
    except OSError:
        return []
    points = [
        line.split()[4].encode().decode("unicode_escape") for line in lines if len(line.split()) > 4
    ]
    root = str(folder)
    return [p for p in points if p == root or p.startswith(root + "/")]


@pytest.fixture(autouse=True)
def _no_mount_left_in_tmp_path(request: pytest.FixtureRequest) -> Iterator[None]:
    """pytest removes a passed test's folder (pyproject: tmp_path_retention_policy =
    "failed", so that a full run does not keep ~20 GB of labs, images and venvs on a disk
    it shares). A mount left in it would make that removal reach into what is mounted
    (a host folder bound in, an image's loop device): such mounts are detached first and
    the test errors, naming them."""
    if "tmp_path" not in request.fixturenames:
        yield
        return
    folder: Path = request.getfixturevalue("tmp_path")  # torn down after this fixture
    yield
    left = _mounts_under(folder)
    for point in sorted(left, reverse=True):
        subprocess.run(["umount", "-l", point], check=False, capture_output=True)
    assert not left, f"mounts left under the test's folder (detached): {left}"


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[str]:
    """One throwaway PostgreSQL server for the session (tests/pg_server.py), started at
    the first test that asks for it; the URL of its admin database."""
    from tests import pg_server

    with pg_server.server() as url:
        yield url


@pytest.fixture(params=["sqlite", "postgresql"])
def registry_location(request: pytest.FixtureRequest, tmp_path: Path) -> Path | str:
    """Where a test's registry lives, once for each backend (issue 23): a new SQLite file,
    then a new database on the session's PostgreSQL server."""
    if request.param == "sqlite":
        return tmp_path / "registry.sqlite3"
    from tests import pg_server

    return pg_server.fresh_database(request.getfixturevalue("postgres_server"))
