"""The one path rule for every file the boot service hands out, over TFTP or HTTP.

A requested name is anchored at ``/`` before it is joined to the served root: leading
slashes are dropped, ``\\`` counts as ``/``, ``.`` and empty parts vanish, and ``..``
may climb only as far as the root. What the name then resolves to (symlinks followed)
must be a regular file inside the real root. That is the whole traversal defence, the
same one line pixiecore's TFTP handler has; ``tests/unit/test_paths.py`` pins it.

A name the file system cannot even look up (a component over 255 bytes, a path over
4095, an ``OSError`` from ``stat``) is refused the same way: every caller answers a
TftpPathError (a TFTP error packet, an HTTP 404) and no caller sees an OSError.

Pure apart from ``realpath`` and ``stat``: no sockets, no protocol. Its users:
``tftp.TftpService`` (each RRQ), ``http_files.FileAreas`` (the sendfile front) and
``routes_files`` (the FastAPI file routes).
"""

from __future__ import annotations

import os
from pathlib import Path, PureWindowsPath

from provisioner.errors import TftpPathError

NAME_MAX = 255  # bytes in one path component (Linux, every local file system)
PATH_MAX = 4096  # bytes in a whole path, with its NUL


def confine(root: Path, requested: str) -> Path:
    """The regular file ``requested`` names under ``root`` (anchored there: leading "/"
    dropped, "\\" is "/"), symlinks resolved. TftpPathError for NUL, empty names, ".."
    leaving the root, drive paths, names too long to look up, symlinks out of the real
    root, non-regular files."""
    if "\x00" in requested:
        raise TftpPathError(f"NUL byte in TFTP file name {requested!r}")
    relative = requested.replace("\\", "/").lstrip("/")
    if PureWindowsPath(relative).drive:
        raise TftpPathError(f"absolute TFTP file name {requested!r}")
    parts: list[str] = []
    for part in relative.split("/"):
        if part == "..":
            if not parts:
                raise TftpPathError(f"TFTP file name {requested!r} leaves the root")
            parts.pop()
        elif part not in ("", "."):
            parts.append(part)
    if not parts:
        raise TftpPathError(f"empty TFTP file name {requested!r}")
    try:
        if max(len(os.fsencode(part)) for part in parts) > NAME_MAX:
            raise TftpPathError(f"TFTP file name {requested!r} has a part over {NAME_MAX} bytes")
        real_root = Path(os.path.realpath(root))
        joined = real_root.joinpath(*parts)
        if len(os.fsencode(joined)) >= PATH_MAX:
            raise TftpPathError(f"TFTP file name {requested!r} is over {PATH_MAX - 1} bytes")
        path = Path(os.path.realpath(joined))
        if not path.is_relative_to(real_root):
            raise TftpPathError(f"TFTP file name {requested!r} resolves outside the root")
        if not path.is_file():
            raise TftpPathError(f"TFTP file name {requested!r} is not a regular file")
    except (OSError, ValueError) as exc:  # ENAMETOOLONG, EACCES, ELOOP; unencodable names
        raise TftpPathError(f"TFTP file name {requested!r} cannot be looked up: {exc}") from exc
    return path
