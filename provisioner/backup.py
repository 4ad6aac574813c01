"""``provisioner backup`` and ``provisioner restore``: what a control node needs to serve
the same nodes again, in one file.

The file is a gzip'd tar, mode 0600, written beside its name and renamed into place::

    manifest.json            format, provisioner_version, schema_version, created,
                             made_from (the state folder), credentials_from, and per
                             file: path, bytes, sha256, mode
    registry.sqlite3         a copy by SQLite's online backup API (consistent while `serve`
                             runs): nodes, their inventories and so their pinned SSH host
                             keys, events, leases, clusters, power URLs, boot-token hashes
    api-token                the API's bearer token
    ssh/id_ed25519[.pub]     the control node's key pair (post-install logs in with it)
    keys/<cluster>.<kind>    the clusters' engine, gateway and Ray keys
    ray/<cluster>.token      Ray tokens where older versions kept them
    hostkeys/<mac>/ssh_host_ed25519_key[.pub]   each node's SSH host key (hostkeys.py)
    power.toml               the BMC passwords file in force (restored into the state folder)

Left out: images, the TFTP folder, artifacts and models (large, rebuilt or added again),
and the configuration file (the operator's, outside the state folder).

:func:`restore` refuses a folder that is not empty unless ``force`` (then it replaces
exactly what a backup holds, stale -wal/-shm included, and keeps images and the rest),
a backup whose registry is newer than this provisioner knows, and any archive whose
members are not exactly the manifest's files with their sizes and hashes. It unpacks into
a 0700 folder inside the state folder and moves the files into place only once all are
checked. A backup holds secrets in clear (keep it like the state folder); its hashes catch
corruption and a changed file, not a forger who rewrites the manifest too.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import logging
import os
import re
import shutil
import tarfile
import tempfile
import time
import zlib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from provisioner import __version__
from provisioner.errors import ProvisionerError
from provisioner.hostkeys import HOSTKEY_DIR
from provisioner.hostkeys import KEY_NAME as HOST_KEY_NAME
from provisioner.registry import Registry, snapshot
from provisioner.registry_schema import SCHEMA_VERSION
from provisioner.sshkeys import KEY_DIR, KEY_NAME

log = logging.getLogger(__name__)

FORMAT = "provisioner-backup/1"
MANIFEST = "manifest.json"
REGISTRY = "registry.sqlite3"
API_TOKEN = "api-token"
CREDENTIALS = "power.toml"
TOP_FILES = (REGISTRY, API_TOKEN, CREDENTIALS)
TOP_DIRS = (KEY_DIR, "keys", "ray")
HOST_KEY_FILES = (HOST_KEY_NAME, f"{HOST_KEY_NAME}.pub")
_MAC_DIR = re.compile(r"^[0-9a-f]{12}$")
# What restore --force replaces: what a backup holds, and the registry's companions.
OWNED = (
    *TOP_FILES, *TOP_DIRS, HOSTKEY_DIR,
    *(f"{REGISTRY}-{end}" for end in ("wal", "shm", "journal")),
)  # fmt: skip
_PART = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@-]{0,127}$")
_CHUNK = 1 << 20


class BackupError(ProvisionerError):
    """A backup could not be written, or an archive is refused at restore."""


def check_name(name: str) -> str:
    """A member name restore may write: a known top-level file, or one plain name in a
    known folder. The whole traversal defence: nothing else leaves the archive."""
    parts = name.split("/")
    if (
        (len(parts) == 1 and name in TOP_FILES)
        or (len(parts) == 2 and parts[0] in TOP_DIRS and _PART.match(parts[1]))
        or (
            len(parts) == 3
            and parts[0] == HOSTKEY_DIR
            and _MAC_DIR.match(parts[1])
            and parts[2] in HOST_KEY_FILES
        )
    ):
        return name
    raise BackupError(f"the backup names {name!r}, not a file a backup holds")


def file_mode(name: str) -> int:
    """Public keys 0644, everything else (secrets, the registry) 0600."""
    return 0o644 if name.endswith(".pub") else 0o600


@dataclass(frozen=True)
class Item:
    path: str
    size: int
    sha256: str

    def as_dict(self) -> dict[str, object]:
        return {"path": self.path, "bytes": self.size, "sha256": self.sha256,
                "mode": f"{file_mode(self.path):04o}"}  # fmt: skip


@dataclass(frozen=True)
class Manifest:
    provisioner_version: str
    schema_version: int
    created: float
    made_from: str  # the state folder it was made from
    files: tuple[Item, ...]
    credentials_from: str | None = None  # the power.toml in force when it was made

    def as_dict(self) -> dict[str, object]:
        return {
            "format": FORMAT,
            "provisioner_version": self.provisioner_version,
            "schema_version": self.schema_version,
            "created": self.created,
            "made_from": self.made_from,
            "credentials_from": self.credentials_from,
            "files": [i.as_dict() for i in self.files],
        }

    @classmethod
    def from_json(cls, text: bytes) -> Manifest:
        try:
            data = json.loads(text)
            if data.get("format") != FORMAT:
                raise BackupError(f"not a {FORMAT} manifest (format {data.get('format')!r})")
            files = tuple(
                Item(check_name(str(f["path"])), int(f["bytes"]), str(f["sha256"]))
                for f in data["files"]
            )
            return cls(
                str(data["provisioner_version"]), int(data["schema_version"]),
                float(data["created"]), str(data["made_from"]), files,
                data.get("credentials_from"),
            )  # fmt: skip
        except (ValueError, TypeError, KeyError, AttributeError) as exc:
            raise BackupError(f"the backup's {MANIFEST} is unreadable: {exc!r}") from exc


@dataclass(frozen=True)
class Outcome:
    """What a backup wrote or a restore read, for the command's output."""

    archive: Path
    state_dir: Path
    size: int  # the archive's bytes
    manifest: Manifest
    counts: Mapping[str, int] | None  # nodes and clusters; None: the registry needs an upgrade
    replaced: tuple[str, ...] = ()  # restore --force: what was in the folder before

    def as_dict(self) -> dict[str, object]:
        return {
            "archive": str(self.archive),
            "bytes": self.size,
            "state_dir": str(self.state_dir),
            **self.manifest.as_dict(),
            "counts": dict(self.counts) if self.counts is not None else None,
            "replaced": list(self.replaced),
        }


# ---------------------------------------------------------------- backup


def sources(state_dir: Path, credentials: Path | None) -> dict[str, Path]:
    """Archive name -> file, for everything but the registry: the API token, the SSH key
    pair, cluster keys, old Ray tokens, the credentials file (as power.toml)."""
    found = {API_TOKEN: state_dir / API_TOKEN}
    for name in (KEY_NAME, f"{KEY_NAME}.pub"):
        found[f"{KEY_DIR}/{name}"] = state_dir / KEY_DIR / name
    for folder in ("keys", "ray"):
        if (state_dir / folder).is_dir():
            for path in sorted((state_dir / folder).iterdir()):
                if _PART.match(path.name):
                    found[f"{folder}/{path.name}"] = path
    hostkeys = state_dir / HOSTKEY_DIR
    if hostkeys.is_dir():
        for node_dir in sorted(hostkeys.iterdir()):
            if _MAC_DIR.match(node_dir.name):
                for name in HOST_KEY_FILES:
                    found[f"{HOSTKEY_DIR}/{node_dir.name}/{name}"] = node_dir / name
    if credentials is not None:
        found[CREDENTIALS] = credentials
    return {n: p for n, p in found.items() if p.is_file() and not p.is_symlink()}


def backup(
    state_dir: Path,
    dest: Path,
    *,
    credentials: Path | None = None,
    force: bool = False,
    now: float | None = None,
) -> Outcome:
    """Write ``state_dir``'s registry and secrets to ``dest`` (see the module docstring)."""
    if dest.exists() and not force:
        raise BackupError(f"{dest} exists: name another file, or --force to replace it")
    created = time.time() if now is None else now
    with tempfile.TemporaryDirectory(prefix="provisioner-backup-") as tmp:
        copy = Path(tmp) / REGISTRY
        version = snapshot(state_dir / REGISTRY, copy)
        blobs = {REGISTRY: copy}
        contents: dict[str, bytes] = {}
        try:
            for name, path in sources(state_dir, credentials).items():
                contents[name] = path.read_bytes()  # read once: hashed and stored the same
        except OSError as exc:
            raise BackupError(f"cannot read {exc.filename}: {exc.strerror}") from exc
        items = [Item(REGISTRY, copy.stat().st_size, _sha256_file(copy))]
        items += [Item(n, len(b), hashlib.sha256(b).hexdigest()) for n, b in contents.items()]
        manifest = Manifest(
            __version__, version, created, str(state_dir), tuple(items),
            str(credentials) if CREDENTIALS in contents else None,
        )  # fmt: skip
        _write(dest, manifest, blobs, contents)
        counts = _counts(copy, version)
    log.info("backup of %s written to %s (%d files)", state_dir, dest, len(items))
    return Outcome(dest, state_dir, dest.stat().st_size, manifest, counts)


def _write(
    dest: Path, manifest: Manifest, blobs: Mapping[str, Path], contents: Mapping[str, bytes]
) -> None:
    tmp = dest.with_name(f".{dest.name}.{os.getpid()}.tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as raw:
            with tarfile.open(fileobj=raw, mode="w:gz") as tar:
                text = json.dumps(manifest.as_dict(), indent=2).encode() + b"\n"
                _add(tar, MANIFEST, 0o600, manifest.created, io.BytesIO(text), len(text))
                for name, path in blobs.items():
                    with path.open("rb") as stream:
                        size = path.stat().st_size
                        _add(tar, name, file_mode(name), manifest.created, stream, size)
                for name, data in contents.items():
                    blob = io.BytesIO(data)
                    _add(tar, name, file_mode(name), manifest.created, blob, len(data))
            raw.flush()
            os.fsync(raw.fileno())
        os.replace(tmp, dest)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise BackupError(f"cannot write {dest}: {exc.strerror or exc}") from exc


def _add(
    tar: tarfile.TarFile, name: str, mode: int, mtime: float, data: IO[bytes], size: int
) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mode, info.mtime = size, mode, int(mtime)
    tar.addfile(info, data)


# ---------------------------------------------------------------- restore


def read_manifest(archive: Path) -> Manifest:
    """The archive's manifest (first member), without unpacking anything."""
    with _open(archive) as tar:
        return _manifest(archive, tar)


def restore(archive: Path, state_dir: Path, *, force: bool = False) -> Outcome:
    """Unpack ``archive`` into ``state_dir`` (see the module docstring)."""
    if state_dir.exists() and not state_dir.is_dir():
        raise BackupError(f"{state_dir} is not a folder")
    present = sorted(p.name for p in state_dir.iterdir()) if state_dir.is_dir() else []
    if present and not force:
        raise BackupError(
            f"{state_dir} is not empty ({', '.join(present[:6])}): restore into an empty"
            " folder, or --force to replace its registry and keys"
        )
    try:
        size = archive.stat().st_size
        state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        state_dir.chmod(0o700)
        staging = Path(tempfile.mkdtemp(prefix=".restore-", dir=state_dir))
    except OSError as exc:
        raise BackupError(f"cannot restore into {state_dir}: {exc.strerror or exc}") from exc
    try:
        manifest = _unpack(archive, staging / "unpacked")
        tree = staging / "tree"
        tree.mkdir(mode=0o700)
        version = snapshot(staging / "unpacked" / REGISTRY, tree / REGISTRY)
        if version != manifest.schema_version:
            raise BackupError(
                f"{archive}: its registry has schema version {version}, its manifest says"
                f" {manifest.schema_version}: the backup was changed"
            )
        for item in manifest.files:
            if item.path != REGISTRY:
                target = tree / item.path
                for folder in reversed(target.relative_to(tree).parents[:-1]):
                    (tree / folder).mkdir(mode=0o700, exist_ok=True)
                os.replace(staging / "unpacked" / item.path, target)
        replaced = _put_in_place(tree, state_dir)
        counts = _counts(state_dir / REGISTRY, version)
    except OSError as exc:
        raise BackupError(f"cannot restore into {state_dir}: {exc.strerror or exc}") from exc
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    log.info("restored %s into %s (%d files)", archive, state_dir, len(manifest.files))
    return Outcome(archive, state_dir, size, manifest, counts, replaced)


def _open(archive: Path) -> tarfile.TarFile:
    try:
        return tarfile.open(archive, mode="r:gz")
    except (tarfile.TarError, OSError, EOFError, zlib.error) as exc:
        raise BackupError(f"{archive} is not a readable backup: {exc}") from exc


def _manifest(archive: Path, tar: tarfile.TarFile) -> Manifest:
    try:
        first = tar.next()
        stream = tar.extractfile(first) if first is not None and first.isreg() else None
        if first is None or first.name != MANIFEST or stream is None:
            raise BackupError(f"{archive} is not a provisioner backup (no {MANIFEST} first)")
        manifest = Manifest.from_json(stream.read(1 << 20))
    except (tarfile.TarError, OSError, EOFError, zlib.error) as exc:
        raise BackupError(f"{archive} is not a readable backup: {exc}") from exc
    if manifest.schema_version > SCHEMA_VERSION:
        raise BackupError(
            f"{archive} holds a registry of schema version {manifest.schema_version}, this"
            f" provisioner knows up to {SCHEMA_VERSION}: upgrade provisioner to restore it"
        )
    names = [i.path for i in manifest.files]
    if REGISTRY not in names or len(set(names)) != len(names):
        raise BackupError(f"{archive}: its manifest lists no registry, or a file twice")
    return manifest


def _unpack(archive: Path, into: Path) -> Manifest:
    """Every file of the manifest, checked (member type, size, sha256), into ``into``;
    a member the manifest does not list, or one missing, refuses the archive."""
    with _open(archive) as tar:
        manifest = _manifest(archive, tar)
        expected = {i.path: i for i in manifest.files}
        seen: set[str] = set()
        try:
            for index, member in enumerate(tar):
                if index == 0:  # the manifest, read above
                    continue
                item = expected.get(member.name)
                if item is None or member.name in seen or not member.isreg():
                    raise BackupError(f"{archive}: unexpected member {member.name!r}")
                seen.add(member.name)
                stream = tar.extractfile(member)
                assert stream is not None  # a regular file's
                target = into / check_name(member.name)
                target.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
                _copy_checked(archive, stream, target, item)
        except (tarfile.TarError, EOFError, zlib.error, gzip.BadGzipFile) as exc:
            raise BackupError(f"{archive} is damaged: {exc}") from exc
        missing = sorted(set(expected) - seen)
        if missing:
            raise BackupError(f"{archive}: missing {', '.join(missing)}")
    return manifest


def _copy_checked(archive: Path, stream: IO[bytes], target: Path, item: Item) -> None:
    digest, size = hashlib.sha256(), 0
    fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    os.fchmod(fd, file_mode(item.path))  # exactly, whatever the umask
    with os.fdopen(fd, "wb") as out:
        while chunk := stream.read(_CHUNK):
            digest.update(chunk)
            size += len(chunk)
            out.write(chunk)
    if size != item.size or digest.hexdigest() != item.sha256:
        raise BackupError(
            f"{archive}: {item.path} does not match the manifest (sha256 or size): the"
            " backup is damaged or was changed"
        )


def _put_in_place(tree: Path, state_dir: Path) -> tuple[str, ...]:
    """Remove what a backup owns from ``state_dir`` (restore --force), then move the
    checked files in; the names removed."""
    replaced = []
    for name in OWNED:
        path = state_dir / name
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        elif path.exists() or path.is_symlink():
            path.unlink()
        else:
            continue
        replaced.append(name)
    for path in sorted(tree.iterdir()):
        os.replace(path, state_dir / path.name)
    return tuple(replaced)


def _counts(registry: Path, version: int) -> dict[str, int] | None:
    if version != SCHEMA_VERSION:
        return None
    reg = Registry(registry, readonly=True)
    try:
        return {"nodes": len(reg.nodes()), "clusters": len(reg.cluster_names())}
    finally:
        reg.close()


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as stream:
        while chunk := stream.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()
