"""Build the shared node image: a Debian root from mmdebstrap, booted stateless over HTTP.

::

    images/debian-bookworm.toml ─ load_recipe ─> RootfsRecipe
    /etc/apt/sources.list* ─ default_mirror ─> the mirror (when the recipe names none)
    mmdebstrap --mode=root --variant=apt|minbase into cache/tmp/build-*/root
        .debs kept in cache/apt-archives (synced in and out by hooks: a warm build
        downloads nothing), the agent + its unit uploaded, units enabled, users made
    root/boot/vmlinuz-<release>                    -> vmlinuz
    root/boot/initrd.img-<release>  (live-boot's)  -> initrd
    mksquashfs root (without /boot)                -> root.squashfs
    store/<name>/{vmlinuz, initrd, root.squashfs, manifest.json}  (published with a rename)

The image boots with ``boot=live fetch=http://HOST/…/root.squashfs``: live-boot in the
image's own initramfs brings the network up with DHCP, downloads the squashfs into RAM
and mounts it under a tmpfs overlay. Nothing is written to the control node's own system:
mmdebstrap builds in a work folder under the cache.

The pure parts (recipe validation, the mirror from apt's sources, the mmdebstrap argv, the
manifest) take plain data; ``build_rootfs`` at the end does the I/O.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
import shlex
import shutil
import subprocess
import tempfile
import time
import tomllib
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path

from provisioner import __version__
from provisioner.image import ImageError, RecipeError
from provisioner.image.discovery import Artifact
from provisioner.image.recipe import RecipeReader

log = logging.getLogger(__name__)

BUILDER_VERSION = 1  # bump when the image layout or the manifest changes
FALLBACK_MIRROR = "http://deb.debian.org/debian"
APT_SOURCES = Path("/etc/apt/sources.list")
APT_SOURCES_D = Path("/etc/apt/sources.list.d")
AGENT_PATH = "/usr/bin/provisioner-agent"
UNIT_PATH = "/etc/systemd/system/provisioner-agent.service"
NETWORK_PATH = "/etc/systemd/network/80-provisioner.network"
VARIANTS = frozenset({"minbase", "apt"})
COMPRESSIONS = frozenset({"gzip", "lz4", "lzo", "xz", "zstd"})
REQUIRED_PACKAGES = ("systemd", "openssh-server", "live-boot")

# The agent runs once per boot, after the network is up, only when the boot carries
# provisioner.url= (as the discovery image's /init does).
AGENT_UNIT = f"""\
[Unit]
Description=Report this node's inventory to the provisioner
ConditionKernelCommandLine=provisioner.url
Wants=network-online.target
After=network-online.target ssh.service

[Service]
Type=oneshot
ExecStart={AGENT_PATH}
StandardOutput=journal+console
StandardError=journal+console

[Install]
WantedBy=multi-user.target
"""

# live-boot configured the NIC in the initramfs; networkd keeps that address and renews it.
NETWORK_UNIT = """\
[Match]
Type=ether

[Network]
DHCP=yes
KeepConfiguration=yes
"""

_NAME = re.compile(r"^[a-z0-9][a-z0-9-]*$")
_PACKAGE = re.compile(r"^[a-z0-9][a-z0-9+.-]+$")
_USER = re.compile(r"^[a-z_][a-z0-9_-]*$")
_WORD = re.compile(r"^[a-z0-9][a-z0-9.-]*$")


# ---------------------------------------------------------------------------- recipe


@dataclass(frozen=True)
class User:
    name: str
    ssh_keys: tuple[str, ...]


@dataclass(frozen=True)
class RootfsRecipe:
    """``images/debian-bookworm.toml``, validated; file paths made absolute."""

    source: Path
    sha256: str
    name: str
    suite: str
    variant: str
    mirror: str | None
    components: tuple[str, ...]
    kernel_package: str
    packages: tuple[str, ...]
    compression: str
    users: tuple[User, ...]
    agent: Path
    extra: tuple[tuple[str, Path], ...]  # (absolute path in the image, file here)


_KEYS: dict[str, frozenset[str]] = {
    "debian": frozenset({"suite", "variant", "mirror", "components"}),
    "kernel": frozenset({"package"}),
    "packages": frozenset({"include"}),
    "squashfs": frozenset({"compression"}),
    "files": frozenset({"agent", "extra"}),
}
_TOP = frozenset({"name", "users", *_KEYS})


class _Reader(RecipeReader):
    def __init__(self, source: Path, data: dict[str, object]) -> None:
        super().__init__(source, data, _KEYS)

    def strings(self, where: str, value: object, pattern: re.Pattern[str]) -> tuple[str, ...]:
        if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
            raise self.fail(where, "must be a list of non-empty strings")
        for item in value:
            if not pattern.match(item):
                raise self.fail(where, f"{item!r} does not match {pattern.pattern}")
        return tuple(value)

    def file(self, where: str, relative: object) -> Path:
        if not isinstance(relative, str) or not relative:
            raise self.fail(where, "must be a non-empty string")
        path = (self.source.parent / relative).resolve()
        if not path.is_file():
            raise self.fail(where, f"{path} is not a file")
        return path


def _users(r: _Reader) -> tuple[User, ...]:
    value = r.data.get("users", [])
    if not isinstance(value, list) or not all(isinstance(u, dict) for u in value):
        raise r.fail("users", "must be an array of tables ([[users]])")
    users: list[User] = []
    for i, table in enumerate(value):
        where = f"users[{i}]"
        unknown = sorted(set(table) - {"name", "ssh_keys"})
        if unknown:
            raise r.fail(f"{where}.{unknown[0]}", "unknown key")
        name = table.get("name")
        if not isinstance(name, str) or not _USER.match(name):
            raise r.fail(f"{where}.name", "must be a user name (a-z, 0-9, _ and -)")
        keys = table.get("ssh_keys", [])
        if not isinstance(keys, list) or not all(isinstance(k, str) for k in keys):
            raise r.fail(f"{where}.ssh_keys", "must be a list of strings")
        for key in keys:
            if "\n" in key or not key.startswith(("ssh-", "ecdsa-", "sk-")):
                raise r.fail(f"{where}.ssh_keys", f"{key[:20]!r}… is not an OpenSSH public key")
        if name in {u.name for u in users}:
            raise r.fail(f"{where}.name", f"user {name!r} is listed twice")
        users.append(User(name, tuple(keys)))
    return tuple(users)


def _extra(r: _Reader) -> tuple[tuple[str, Path], ...]:
    value = r.table("files").get("extra", {})
    if not isinstance(value, dict):
        raise r.fail("files.extra", "must be a table of image path = file here")
    out: list[tuple[str, Path]] = []
    for target, relative in sorted(value.items()):
        where = f"files.extra.{target!r}"
        if not target.startswith("/") or ".." in target.split("/") or target.endswith("/"):
            raise r.fail(where, "the image path must be absolute, without '..', to a file")
        out.append((target, r.file(where, relative)))
    return tuple(out)


def parse_recipe(text: bytes, source: Path) -> RootfsRecipe:
    """Validate a recipe's bytes (``source`` names it in errors and anchors its paths)."""
    try:
        data = tomllib.loads(text.decode())
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise RecipeError(source, "(file)", f"not valid TOML: {exc}") from exc
    unknown = sorted(set(data) - _TOP)
    if unknown:
        raise RecipeError(source, unknown[0], "unknown key")
    r = _Reader(source, data)
    variant = r.string("debian", "variant", default="apt")
    if variant not in VARIANTS:
        raise r.fail("debian.variant", f"{variant!r} is not one of {', '.join(sorted(VARIANTS))}")
    mirror_value = r.table("debian").get("mirror")
    mirror = None
    if mirror_value is not None:
        mirror = r.string("debian", "mirror")
        if not mirror.startswith(("http://", "https://", "file:/")):
            raise r.fail("debian.mirror", f"{mirror!r} is not an http(s):// or file:/ URL")
    components = r.strings(
        "debian.components", r.table("debian").get("components", ["main"]), _WORD
    )
    packages = r.strings("packages.include", r.table("packages").get("include"), _PACKAGE)
    kernel = r.string("kernel", "package", _PACKAGE)
    missing = [p for p in REQUIRED_PACKAGES if p not in packages]
    if missing:
        raise r.fail("packages.include", f"must include {', '.join(missing)}")
    compression = "zstd"
    if "squashfs" in data:
        compression = r.string("squashfs", "compression", default="zstd")
    if compression not in COMPRESSIONS:
        choices = ", ".join(sorted(COMPRESSIONS))
        raise r.fail("squashfs.compression", f"{compression!r} is not one of {choices}")
    return RootfsRecipe(
        source=source,
        sha256=hashlib.sha256(text).hexdigest(),
        name=r.string("", "name", _NAME),
        suite=r.string("debian", "suite", _WORD),
        variant=variant,
        mirror=mirror,
        components=components,
        kernel_package=kernel,
        packages=packages,
        compression=compression,
        users=_users(r),
        agent=r.file("files.agent", r.table("files").get("agent")),
        extra=_extra(r),
    )


def load_recipe(path: Path) -> RootfsRecipe:
    """Read and validate an image recipe; errors name the file and the key."""
    try:
        text = path.read_bytes()
    except OSError as exc:
        raise RecipeError(path, "(file)", f"cannot read: {exc.strerror}") from exc
    return parse_recipe(text, path.resolve())


# ---------------------------------------------------------------------- the mirror


def mirror_from_sources(texts: Iterable[tuple[str, str]]) -> str | None:
    """The first Debian archive URI in apt's sources (not the security archive).

    ``texts`` are ``(file name, contents)`` pairs: ``*.list`` files in one-line format,
    ``*.sources`` files in deb822 format; disabled stanzas (``Enabled: no``) are skipped.
    """
    for name, text in texts:
        if name.endswith(".sources"):
            for stanza in re.split(r"\n\s*\n", text):
                fields: dict[str, str] = {}
                for line in stanza.splitlines():
                    if line.startswith("#") or ":" not in line or line[:1].isspace():
                        continue
                    key, _, value = line.partition(":")
                    fields[key.strip().lower()] = value.strip()
                if fields.get("enabled", "yes").lower() == "no":
                    continue
                if "deb" not in fields.get("types", "").split():
                    continue
                for uri in fields.get("uris", "").split():
                    if _debian_archive(uri):
                        return uri.rstrip("/")
        else:
            for line in text.splitlines():
                words = re.sub(r"\[[^]]*\]", "", line.split("#", 1)[0]).split()
                if len(words) >= 3 and words[0] == "deb" and _debian_archive(words[1]):
                    return words[1].rstrip("/")
    return None


def _debian_archive(uri: str) -> bool:
    return uri.startswith(("http://", "https://", "file:/")) and "security" not in uri


def default_mirror() -> str:
    """This machine's configured Debian mirror, else ``FALLBACK_MIRROR``."""
    files = [APT_SOURCES] if APT_SOURCES.is_file() else []
    if APT_SOURCES_D.is_dir():
        files += sorted(p for p in APT_SOURCES_D.iterdir() if p.suffix in {".list", ".sources"})
    texts = []
    for path in files:
        try:
            texts.append((path.name, path.read_text(errors="replace")))
        except OSError:
            log.debug("cannot read %s", path)
    return mirror_from_sources(texts) or FALLBACK_MIRROR


# ------------------------------------------------------------------- mmdebstrap argv


def customize_commands(recipe: RootfsRecipe, staged: Path) -> list[str]:
    """The ``--customize-hook`` values: upload the staged files, enable units, make users.

    ``staged`` holds the files to upload under their image paths (see ``staged_files``).
    """
    q = shlex.quote
    # sync-in (tar) creates missing parent folders; "upload" would fail on them.
    hooks = [f"sync-in {q(str(staged))} /"]
    script = [
        f'chmod 0755 "$1"{AGENT_PATH}',
        'chroot "$1" systemctl enable provisioner-agent.service systemd-networkd.service',
        # A machine-id made at build time would be shared by every node: leave it empty.
        ': > "$1"/etc/machine-id',
        # Host keys made at build time would be shared too: sshd's unit regenerates them.
        'rm -f "$1"/etc/ssh/ssh_host_*',
        # mmdebstrap copies the build host's hostname and resolv.conf in: drop both, so a
        # node takes its name and resolvers from DHCP (live-boot's initramfs, networkd).
        'rm -f "$1"/etc/hostname "$1"/etc/resolv.conf',
    ]
    for user in recipe.users:
        home = "/root" if user.name == "root" else f"/home/{user.name}"
        if user.name != "root":
            script.append(f'chroot "$1" useradd -m -s /bin/bash {q(user.name)}')
        if user.ssh_keys:
            script += [
                f'mkdir -p -m 0700 "$1"{home}/.ssh',
                f'printf "%s\\n" {" ".join(q(k) for k in user.ssh_keys)}'
                f' > "$1"{home}/.ssh/authorized_keys',
                f'chroot "$1" chown -R {q(user.name)}: {home}/.ssh',
            ]
    hooks += script
    return hooks


SSH_KEYGEN_DROPIN = "/etc/systemd/system/ssh.service.d/provisioner-hostkeys.conf"
SSH_KEYGEN = """\
[Service]
ExecStartPre=
ExecStartPre=/usr/bin/ssh-keygen -A
ExecStartPre=/usr/sbin/sshd -t
"""


def staged_files(recipe: RootfsRecipe) -> dict[str, bytes]:
    """Every file the build uploads into the image, by absolute image path."""
    files = {
        AGENT_PATH: recipe.agent.read_bytes(),
        UNIT_PATH: AGENT_UNIT.encode(),
        NETWORK_PATH: NETWORK_UNIT.encode(),
        SSH_KEYGEN_DROPIN: SSH_KEYGEN.encode(),
    }
    for target, path in recipe.extra:
        files[target] = path.read_bytes()
    return files


def mmdebstrap_argv(
    recipe: RootfsRecipe, mirror: str, root: Path, archives: Path, staged: Path
) -> list[str]:
    """The whole mmdebstrap command line. ``archives`` keeps the .debs between builds."""
    q = shlex.quote
    include = [recipe.kernel_package, *recipe.packages]
    argv = [
        "mmdebstrap",
        "--mode=root",
        f"--variant={recipe.variant}",
        "--format=directory",
        f"--components={','.join(recipe.components)}",
        f"--include={','.join(include)}",
        # Keep the downloaded .debs: sync them in before apt runs and out at the end.
        "--skip=download/empty",
        "--skip=essential/unlink",
        '--aptopt=Acquire::Languages "none"',
        "--dpkgopt=path-exclude=/usr/share/doc/*",
        "--dpkgopt=path-include=/usr/share/doc/*/copyright",
        "--dpkgopt=path-exclude=/usr/share/man/*",
        "--dpkgopt=path-exclude=/usr/share/locale/*",
        '--setup-hook=mkdir -p "$1"/var/cache/apt/archives/',
        f"--setup-hook=sync-in {q(str(archives))} /var/cache/apt/archives/",
    ]
    argv += [f"--customize-hook={hook}" for hook in customize_commands(recipe, staged)]
    argv += [
        f"--customize-hook=sync-out /var/cache/apt/archives {q(str(archives))}",
        # The .debs are kept outside; the image ships without them.
        '--customize-hook=rm -f "$1"/var/cache/apt/archives/*.deb',
        recipe.suite,
        str(root),
        mirror,
    ]
    return argv


# ---------------------------------------------------------------------- the manifest


@dataclass(frozen=True)
class Manifest:
    """``manifest.json``: what was built, from what, by which builder."""

    name: str
    suite: str
    variant: str
    mirror: str
    kernel_release: str
    packages: tuple[str, ...]  # "name version", sorted
    vmlinuz: Artifact
    initrd: Artifact
    squashfs: Artifact
    compression: str
    root_bytes: int  # the unpacked tree, without /boot
    download_bytes: int  # .debs fetched from the mirror by this build (0: all cached)
    mmdebstrap_seconds: float
    built_at: str
    build_seconds: float
    recipe_sha256: str
    builder_version: int
    provisioner_version: str

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True) + "\n"

    @classmethod
    def from_json(cls, text: str) -> Manifest:
        try:
            data = json.loads(text)
            for key in ("vmlinuz", "initrd", "squashfs"):
                data[key] = Artifact(**data[key])
            data["packages"] = tuple(data["packages"])
            return cls(**data)
        except (ValueError, TypeError, KeyError) as exc:
            raise ImageError(f"not a valid image manifest: {exc}") from exc


def parse_dpkg_query(text: str) -> tuple[str, ...]:
    """``dpkg-query -W -f '${Package} ${Version}\\n'`` output -> sorted "name version"."""
    return tuple(sorted(line.strip() for line in text.splitlines() if line.strip()))


def kernel_release(boot_names: Iterable[str]) -> str:
    """The one release with both ``vmlinuz-R`` and ``initrd.img-R`` in /boot."""
    names = set(boot_names)
    releases = sorted(
        n.removeprefix("vmlinuz-")
        for n in names
        if n.startswith("vmlinuz-") and f"initrd.img-{n.removeprefix('vmlinuz-')}" in names
    )
    if len(releases) != 1:
        raise ImageError(f"expected one kernel with an initrd in /boot, found {releases or 'none'}")
    return releases[0]


# ----------------------------------------------------------------------- the build


def _file_artifact(name: str, path: Path) -> Artifact:
    digest = hashlib.sha256()
    with path.open("rb") as stream:
        while chunk := stream.read(1 << 20):
            digest.update(chunk)
    return Artifact(name, path.stat().st_size, digest.hexdigest())


def _debs(archives: Path) -> dict[str, int]:
    return {p.name: p.stat().st_size for p in archives.glob("*.deb")}


def _tree_bytes(root: Path) -> int:
    total = 0
    for dirpath, _dirs, files in os.walk(root):
        if Path(dirpath) == root / "boot":
            continue
        for name in files:
            with contextlib.suppress(OSError):
                total += os.lstat(os.path.join(dirpath, name)).st_size
    return total


def _stream(argv: list[str], progress: Callable[[str], None], prefix: str) -> None:
    """Run ``argv``, passing its status lines to ``progress``; a failure is ImageError."""
    env = {**os.environ, "LC_ALL": "C.UTF-8", "LANG": "C.UTF-8"}
    tail: list[str] = []
    try:
        proc = subprocess.Popen(
            argv,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            errors="replace",
            env=env,
            stdin=subprocess.DEVNULL,
        )
    except FileNotFoundError as exc:
        raise ImageError(f"{argv[0]} is not installed (needed to build images)") from exc
    with proc:
        assert proc.stdout is not None
        for raw in proc.stdout:
            line = raw.rstrip()
            tail = [*tail[-19:], line]
            if line.startswith(("I:", "E:", "W:", "Filesystem size")):
                progress(f"{prefix}: {line}")
    if proc.returncode != 0:
        raise ImageError(
            f"{argv[0]} failed with status {proc.returncode}: " + "\n".join(tail[-10:])
        )


def build_rootfs(
    recipe: Path, store: Path, cache: Path, progress: Callable[[str], None]
) -> Manifest:
    """Build ``store/<name>/{vmlinuz,initrd,root.squashfs,manifest.json}`` from ``recipe``.

    Needs root (mmdebstrap --mode=root), mmdebstrap and mksquashfs. The .debs are kept in
    ``cache/apt-archives``; the work tree lives under ``cache/tmp`` and is removed.
    """
    started = time.monotonic()
    spec = load_recipe(recipe)
    mirror = spec.mirror or default_mirror()
    archives = cache / "apt-archives"
    scratch_root = cache / "tmp"
    try:
        archives.mkdir(parents=True, exist_ok=True)
        scratch_root.mkdir(parents=True, exist_ok=True)
        store.mkdir(parents=True, exist_ok=True)
        scratch = Path(tempfile.mkdtemp(prefix="rootfs-", dir=scratch_root))
        staging = Path(tempfile.mkdtemp(prefix=f".{spec.name}-new-", dir=store))
    except OSError as exc:
        raise ImageError(f"cannot create work folders in {cache} and {store}: {exc}") from exc
    final = store / spec.name
    try:
        staged = scratch / "staged"
        for target, data in staged_files(spec).items():
            path = staged / target.lstrip("/")
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
        before = _debs(archives)
        root = scratch / "root"
        progress(f"mmdebstrap: {spec.suite} ({spec.variant}) from {mirror}")
        t0 = time.monotonic()
        _stream(mmdebstrap_argv(spec, mirror, root, archives, staged), progress, "mmdebstrap")
        mmdebstrap_seconds = round(time.monotonic() - t0, 2)
        after = _debs(archives)
        download = sum(size for name, size in after.items() if name not in before)
        progress(f"mmdebstrap: done in {mmdebstrap_seconds} s, downloaded {download} bytes")
        release = kernel_release(p.name for p in (root / "boot").iterdir())
        shutil.copyfile(root / "boot" / f"vmlinuz-{release}", staging / "vmlinuz")
        shutil.copyfile(root / "boot" / f"initrd.img-{release}", staging / "initrd")
        packages = parse_dpkg_query(
            subprocess.run(
                [
                    "dpkg-query",
                    f"--admindir={root}/var/lib/dpkg",
                    "-W",
                    "-f",
                    "${Package} ${Version}\\n",
                ],
                capture_output=True,
                text=True,
                check=True,
            ).stdout
        )
        root_bytes = _tree_bytes(root)
        progress(f"mksquashfs: {root_bytes} bytes, {spec.compression}")
        _stream(
            ["mksquashfs", str(root), str(staging / "root.squashfs"), "-noappend",
             "-comp", spec.compression, "-e", "boot", "-no-progress", "-quiet"],
            progress, "mksquashfs",
        )  # fmt: skip
        manifest = Manifest(
            name=spec.name,
            suite=spec.suite,
            variant=spec.variant,
            mirror=mirror,
            kernel_release=release,
            packages=packages,
            vmlinuz=_file_artifact("vmlinuz", staging / "vmlinuz"),
            initrd=_file_artifact("initrd", staging / "initrd"),
            squashfs=_file_artifact("root.squashfs", staging / "root.squashfs"),
            compression=spec.compression,
            root_bytes=root_bytes,
            download_bytes=download,
            mmdebstrap_seconds=mmdebstrap_seconds,
            built_at=datetime.now(UTC).isoformat(timespec="seconds"),
            build_seconds=round(time.monotonic() - started, 2),
            recipe_sha256=spec.sha256,
            builder_version=BUILDER_VERSION,
            provisioner_version=__version__,
        )
        (staging / "manifest.json").write_text(manifest.to_json())
        staging.chmod(0o755)
        old = None
        if final.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{spec.name}-old-", dir=store))
            os.rename(final, old / spec.name)
        os.rename(staging, final)
        if old is not None:
            shutil.rmtree(old)
    except (OSError, subprocess.CalledProcessError) as exc:
        raise ImageError(f"cannot build the image {spec.name}: {exc}") from exc
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
        shutil.rmtree(staging, ignore_errors=True)
    progress(
        f"done: {final} (squashfs {manifest.squashfs.size} bytes, initrd {manifest.initrd.size}"
        f" bytes, built in {manifest.build_seconds} s)"
    )
    log.info("built %s: squashfs %d bytes", final, manifest.squashfs.size)
    return manifest
