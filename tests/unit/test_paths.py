"""confine() is the whole traversal defence of every file area, over TFTP and HTTP: a
requested name is anchored at "/" before it is joined to the root."""

from __future__ import annotations

import os
from pathlib import Path
from urllib.parse import quote

import pytest

from provisioner.boot import http_files, paths, routes_files, tftp
from provisioner.boot.paths import confine
from provisioner.errors import TftpPathError


@pytest.fixture
def root(tmp_path: Path) -> Path:
    """A served root with files, a directory, and symlinks in and out of it."""
    served = tmp_path / "root"
    (served / "pxelinux.cfg").mkdir(parents=True)
    (served / "etc").mkdir()
    (served / "undionly.kpxe").write_bytes(b"ipxe")
    (served / "pxelinux.cfg" / "default").write_text("default local\n")
    (served / "etc" / "passwd").write_text("not the host's\n")
    (served / "01:23:45").write_text("colons are fine\n")
    (tmp_path / "secret").write_text("outside the root\n")
    (served / "escape").symlink_to(tmp_path / "secret")
    (served / "escape-dir").symlink_to(tmp_path)
    (served / "ipxe.efi").symlink_to(served / "undionly.kpxe")
    (served / "relative.efi").symlink_to("pxelinux.cfg/default")
    (served / "dangling").symlink_to(served / "nowhere")
    return served


SERVED = [
    ("undionly.kpxe", "undionly.kpxe"),
    ("/undionly.kpxe", "undionly.kpxe"),
    ("//undionly.kpxe", "undionly.kpxe"),
    ("\\undionly.kpxe", "undionly.kpxe"),
    ("pxelinux.cfg/default", "pxelinux.cfg/default"),
    ("pxelinux.cfg\\default", "pxelinux.cfg/default"),
    ("./pxelinux.cfg//default", "pxelinux.cfg/default"),
    ("pxelinux.cfg/../undionly.kpxe", "undionly.kpxe"),
    ("/etc/passwd", "etc/passwd"),  # anchored at the root, not the host's /etc/passwd
    ("01:23:45", "01:23:45"),
    ("ipxe.efi", "undionly.kpxe"),  # a symlink inside the root resolves inside it
    ("relative.efi", "pxelinux.cfg/default"),
    ("escape-dir/root/undionly.kpxe", "undionly.kpxe"),  # only where it lands counts
]


@pytest.mark.parametrize(("requested", "expected"), SERVED)
def test_confine_serves_names_inside_the_root(root: Path, requested: str, expected: str) -> None:
    assert confine(root, requested) == (root / expected).resolve()


REFUSED = [
    ("../etc/passwd", "leaves the root"),
    ("../../etc/passwd", "leaves the root"),
    ("a/../../x", "leaves the root"),
    ("pxelinux.cfg/../../root/undionly.kpxe", "leaves the root"),
    ("/../undionly.kpxe", "leaves the root"),
    ("..\\..\\windows\\win.ini", "leaves the root"),
    ("C:\\windows\\win.ini", "absolute"),
    ("c:/undionly.kpxe", "absolute"),
    ("undionly.kpxe\x00.png", "NUL"),
    ("\x00", "NUL"),
    ("", "empty"),
    ("/", "empty"),
    ("./", "empty"),
    ("escape", "outside the root"),
    ("escape-dir/secret", "outside the root"),
    ("pxelinux.cfg", "not a regular file"),
    ("/pxelinux.cfg/", "not a regular file"),
    ("missing.efi", "not a regular file"),
    ("dangling", "not a regular file"),
    ("etc/shadow", "not a regular file"),
]


@pytest.mark.parametrize(("requested", "reason"), REFUSED)
def test_confine_refuses(root: Path, requested: str, reason: str) -> None:
    with pytest.raises(TftpPathError, match=reason):
        confine(root, requested)


def test_confine_follows_a_symlinked_root(root: Path, tmp_path: Path) -> None:
    link = tmp_path / "tftpboot"
    link.symlink_to(root)
    assert confine(link, "/undionly.kpxe") == (root / "undionly.kpxe").resolve()
    with pytest.raises(TftpPathError):
        confine(link, "escape")


def test_confine_refuses_a_fifo(root: Path) -> None:
    os.mkfifo(root / "fifo")  # would block the TFTP thread on open
    with pytest.raises(TftpPathError, match="not a regular file"):
        confine(root, "fifo")


def test_every_file_server_asks_the_one_rule() -> None:
    """TFTP, the sendfile front and the FastAPI file routes share paths.confine."""
    assert tftp.confine is http_files.confine is routes_files.confine is paths.confine


# A name the file system cannot look up (ENAMETOOLONG) is refused like any other: no
# caller sees an OSError (TFTP dropped the session, FastAPI answered 500).
TOO_LONG = [
    ("a" * 256, "over 255 bytes"),
    ("pxelinux.cfg/" + "b" * 300, "over 255 bytes"),
    ("é" * 128, "over 255 bytes"),  # 256 bytes in UTF-8
    ("/".join(["abcdefgh"] * 500), "over 4095 bytes"),
    ("\ud800.efi", "cannot be looked up"),  # a lone surrogate: no file name at all
]


@pytest.mark.parametrize(("requested", "reason"), TOO_LONG)
def test_confine_refuses_names_too_long_to_look_up(root: Path, requested: str, reason: str) -> None:
    with pytest.raises(TftpPathError, match=reason):
        confine(root, requested)


def test_a_name_of_255_bytes_is_only_not_found(root: Path) -> None:
    (root / ("c" * 255)).write_text("the longest name there is\n")
    assert confine(root, "c" * 255) == (root / ("c" * 255)).resolve()
    with pytest.raises(TftpPathError, match="not a regular file"):
        confine(root, "d" * 255)


ON_THE_WIRE = TOO_LONG[:-1]  # TFTP and HTTP names are unquoted bytes: never a lone surrogate


@pytest.mark.parametrize(("requested", "reason"), ON_THE_WIRE)
def test_tftp_answers_a_name_too_long_with_an_error(
    root: Path, requested: str, reason: str
) -> None:
    """tftpy's dyn_file_func: None is its File not found error packet, not a dropped loop."""
    service = tftp.TftpService(root, "127.0.0.1", 0)
    token = tftp._TOKEN_PREFIX + quote(requested, safe="")
    assert service._open(token, "10.20.0.100", 2000) is None
    assert service.stats.refused == 1


@pytest.mark.parametrize(("requested", "reason"), ON_THE_WIRE)
def test_the_sendfile_front_hands_a_name_too_long_to_the_app(
    root: Path, requested: str, reason: str
) -> None:
    """No file: the app answers it (404, test_http_app.py), the front does not raise."""
    areas = http_files.FileAreas({"tftp": root})
    assert areas.locate("/tftp/" + quote(requested, safe="/")) is None
