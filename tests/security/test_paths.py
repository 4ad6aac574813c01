"""Path traversal on every file area (issue 20, item 7): /images, /tftp, /artifacts and
/models over HTTP (FileAreas.locate, in front of every file route) and TFTP's names (the
same confine()). Each hostile form is refused: '..', encoded and double-encoded dots and
slashes, backslashes, absolute and drive paths, NUL, symlinks out of the area, and a file
that exists outside each area is never the answer. The HTTP ones over a real socket are in
test_http_surface.py; here every form meets every area, in-process."""

from __future__ import annotations

from pathlib import Path

import pytest

from provisioner.boot.http_files import FileAreas
from provisioner.boot.paths import TftpPathError, confine

AREAS = ("images", "tftp", "artifacts", "models")
HOSTILE = [
    "../secret", "sub/../../secret", "%2e%2e/secret", "%2E%2E/secret", "%252e%252e/secret",
    "..%2fsecret", "%2e%2e%2fsecret", "..%5csecret", "..\\secret", "sub/..\\..\\secret",
    "/../secret", "//../secret", "C:/secret", "C:\\secret", "secret%00.txt", "ok.txt%00",
    "link-out", "sub/link-dir/secret", "", ".", "sub/..",
]  # fmt: skip


@pytest.fixture
def areas(tmp_path: Path) -> FileAreas:
    (tmp_path / "secret").write_text("not for nodes")
    roots = {}
    for name in AREAS:
        root = tmp_path / "state" / name
        (root / "sub").mkdir(parents=True)
        (root / "ok.txt").write_text("fine")
        (root / "link-out").symlink_to(tmp_path / "secret")
        (root / "sub" / "link-dir").symlink_to(tmp_path)
        roots[name] = root
    return FileAreas(roots)


@pytest.mark.parametrize("area", AREAS)
def test_every_hostile_path_is_refused_in_every_area(areas: FileAreas, area: str) -> None:
    assert areas.locate(f"/{area}/ok.txt") is not None  # the area serves what it holds
    for hostile in HOSTILE:
        found = areas.locate(f"/{area}/{hostile}")
        assert found is None, (area, hostile, found)


@pytest.mark.parametrize("name", [h.replace("%00", "\x00").replace("%2f", "/") for h in HOSTILE])
def test_tftp_names_are_confined_the_same_way(areas: FileAreas, name: str) -> None:
    root = areas.areas["tftp"]
    try:
        path = confine(root, name)
    except TftpPathError:
        return
    assert path.is_relative_to(root.resolve()) and path.read_text() == "fine", (name, path)
