"""A passed test's folder is removed when it ends (pyproject: tmp_path_retention_policy),
and a mount left in it is detached first: the removal never reaches into what it mounts.
Runs pytest itself (pytester) on a test that leaves a bind mount of a real folder."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

pytest_plugins = ["pytester"]
ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.root


def test_a_mount_left_in_a_passed_tests_folder_is_detached_not_emptied(
    pytester: pytest.Pytester, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root (mount --bind)")
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "keep").write_text("a host folder's file\n")
    pytester.makeini("[pytest]\ntmp_path_retention_policy = failed\n")
    pytester.makeconftest("from tests.conftest import _no_mount_left_in_tmp_path  # noqa: F401\n")
    pytester.makepyfile(
        f"""
        import subprocess

        def test_leaves_a_bind_mount(tmp_path):
            (tmp_path / "m").mkdir()
            subprocess.run(["mount", "--bind", "{outside}", str(tmp_path / "m")], check=True)
            (tmp_path / "big").write_bytes(bytes(1024))

        def test_leaves_files(tmp_path):
            (tmp_path / "big").write_bytes(bytes(1024))
        """
    )
    monkeypatch.setenv("PYTHONPATH", str(ROOT))
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "--basetemp", "inner")
    result.assert_outcomes(passed=2, errors=1)
    result.stdout.fnmatch_lines(["*mounts left under the test's folder (detached)*"])
    assert (outside / "keep").read_text() == "a host folder's file\n"
    inner = pytester.path / "inner"
    assert not (inner / "test_leaves_files0").exists()  # a passed test's folder is gone
    assert not [line for line in Path("/proc/self/mountinfo").read_text().splitlines()
                if str(inner) in line]  # fmt: skip
