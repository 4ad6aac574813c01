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
    store/<name>@<version>/{vmlinuz, initrd, root.squashfs, manifest.json}  (image/store.py)

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
import shlex
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from provisioner import __version__
from provisioner.image import ImageError, guardrails
from provisioner.image.discovery import Artifact
from provisioner.image.layer_build import layer_hooks, layer_report, parse_dpkg_query
from provisioner.image.module_signing import SigningKey, ensure_signing_key, signing_dir
from provisioner.image.rootfs_recipe import (
    RootfsRecipe,
    default_mirror,
    load_recipe,
    sources_lines,
)
from provisioner.image.store import ImageStore

log = logging.getLogger(__name__)

BUILDER_VERSION = 4  # bump when the image layout or the manifest changes (4: layer)
AGENT_PATH = "/usr/bin/provisioner-agent"
UNIT_PATH = "/etc/systemd/system/provisioner-agent.service"
KEYS_UNIT_PATH = "/etc/systemd/system/provisioner-keys.service"
# Squashfs and file times when the environment sets no SOURCE_DATE_EPOCH: a fixed instant,
# so that two builds of the same packages give the same root.squashfs.
DEFAULT_SOURCE_DATE_EPOCH = 1_700_000_000
NETWORK_PATH = "/etc/systemd/network/80-provisioner.network"

# The agent runs once per boot, after the network is up, only when the boot carries
# provisioner.url= (as the discovery image's /init does).
AGENT_UNIT = f"""\
[Unit]
Description=Report this node's inventory to the provisioner
ConditionKernelCommandLine=provisioner.url
Wants=network-online.target
After=network-online.target ssh.service provisioner-keys.service

[Service]
Type=oneshot
ExecStart={AGENT_PATH}
StandardOutput=journal+console
StandardError=journal+console

[Install]
WantedBy=multi-user.target
"""

# The control node's public key, fetched with this boot's token and installed for root:
# post-install logs in with it. Before the agent's report, so a reported node takes logins.
# The node's own host key (kept by the control node) comes with it, before sshd starts.
KEYS_UNIT = f"""\
[Unit]
Description=Install the provisioner's SSH key for root and this node's host key
ConditionKernelCommandLine=provisioner.url
Wants=network-online.target
After=network-online.target
Before=ssh.service

[Service]
Type=oneshot
RemainAfterExit=yes
ExecStart={AGENT_PATH} --keys
StandardOutput=journal+console
StandardError=journal+console

[Install]
WantedBy=multi-user.target
"""

# The accelerator exporter: every 15 s, node_exporter textfile metrics from the node's
# accelerators (images/agent/provisioner-accel-exporter); nothing on a node without one.
ACCEL_EXPORTER_PATH = "/usr/bin/provisioner-accel-exporter"
ACCEL_SERVICE_PATH = "/etc/systemd/system/provisioner-accel-exporter.service"
ACCEL_TIMER_PATH = "/etc/systemd/system/provisioner-accel-exporter.timer"
TEXTFILE_DIR = "/var/lib/prometheus/node-exporter"  # Debian's node exporter reads *.prom
ACCEL_SERVICE = f"""\
[Unit]
Description=Write this node's accelerator metrics for the node exporter

[Service]
Type=oneshot
ExecStart={ACCEL_EXPORTER_PATH}
ProtectSystem=strict
ReadWritePaths=-{TEXTFILE_DIR}
ProtectHome=yes
PrivateTmp=yes
NoNewPrivileges=yes
"""
ACCEL_TIMER = """\
[Unit]
Description=Accelerator metrics for the node exporter, every 15 s

[Timer]
OnBootSec=5s
OnUnitActiveSec=15s
AccuracySec=1s

[Install]
WantedBy=timers.target
"""

# live-boot configured the NIC in the initramfs; networkd keeps that address and renews it.
NETWORK_UNIT = """\
[Match]
Type=ether

[Network]
DHCP=yes
KeepConfiguration=yes
"""


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
        'chroot "$1" systemctl enable provisioner-agent.service provisioner-keys.service'
        " systemd-networkd.service",
        # A machine-id made at build time would be shared by every node: leave it empty.
        ': > "$1"/etc/machine-id',
        # Host keys made at build time would be shared too: sshd's unit regenerates them.
        'rm -f "$1"/etc/ssh/ssh_host_*',
        # mmdebstrap copies the build host's hostname and resolv.conf in: drop both, so a
        # node takes its name and resolvers from DHCP (live-boot's initramfs, networkd).
        'rm -f "$1"/etc/hostname "$1"/etc/resolv.conf',
    ]
    if recipe.accel_exporter is not None:
        script += [
            f'chmod 0755 "$1"{ACCEL_EXPORTER_PATH}',
            'chroot "$1" systemctl enable provisioner-accel-exporter.timer',
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


# Host keys: the one the control node issued (provisioner-keys.service put it in place),
# else one made now (a boot without the control node's key: every type, as Debian does).
SSH_KEYGEN_DROPIN = "/etc/systemd/system/ssh.service.d/provisioner-hostkeys.conf"
SSH_KEYGEN = """\
[Service]
ExecStartPre=
ExecStartPre=/bin/sh -c 'test -s /etc/ssh/ssh_host_ed25519_key || /usr/bin/ssh-keygen -A'
ExecStartPre=/usr/sbin/sshd -t
"""
# sshd offers the ed25519 key only: the one post-install pins.
SSHD_HOSTKEY_PATH = "/etc/ssh/sshd_config.d/provisioner-hostkey.conf"
SSHD_HOSTKEY = "HostKey /etc/ssh/ssh_host_ed25519_key\n"


# The recipe's root check, as an initramfs-tools init-bottom script: it runs after live-boot
# mounted the fetched root and before the switch to it (images/initramfs/).
ROOT_CHECK_PATH = "/etc/initramfs-tools/scripts/init-bottom/provisioner-root-check"
# The recipe's netconsole script, init-bottom too: live-boot brought the NIC up; it runs
# before the root check (alphabetical), so a refused root is heard on the control node.
NETCONSOLE_PATH = "/etc/initramfs-tools/scripts/init-bottom/provisioner-netconsole"
# Files the initramfs takes: uploaded before the packages are installed (the kernel's
# postinst runs update-initramfs then), not with the rest at the end.
EARLY_PREFIX = "/etc/initramfs-tools/"
EXECUTABLE = frozenset({AGENT_PATH, ROOT_CHECK_PATH, NETCONSOLE_PATH, ACCEL_EXPORTER_PATH})


def staged_files(recipe: RootfsRecipe) -> dict[str, bytes]:
    """Every file the build uploads into the image, by absolute image path."""
    files = {
        AGENT_PATH: recipe.agent.read_bytes(),
        UNIT_PATH: AGENT_UNIT.encode(),
        KEYS_UNIT_PATH: KEYS_UNIT.encode(),
        NETWORK_PATH: NETWORK_UNIT.encode(),
        SSH_KEYGEN_DROPIN: SSH_KEYGEN.encode(),
        SSHD_HOSTKEY_PATH: SSHD_HOSTKEY.encode(),
    }
    if recipe.root_check is not None:
        files[ROOT_CHECK_PATH] = recipe.root_check.read_bytes()
    if recipe.netconsole is not None:
        files[NETCONSOLE_PATH] = recipe.netconsole.read_bytes()
    if recipe.accel_exporter is not None:
        files[ACCEL_EXPORTER_PATH] = recipe.accel_exporter.read_bytes()
        files[ACCEL_SERVICE_PATH] = ACCEL_SERVICE.encode()
        files[ACCEL_TIMER_PATH] = ACCEL_TIMER.encode()
    for target, path in recipe.extra:
        files[target] = path.read_bytes()
    return files


def stage(files: dict[str, bytes], staged: Path, early: Path) -> None:
    """Write ``files`` under ``early`` (what the initramfs takes) or ``staged`` (the rest),
    each at its image path; the agent and the root check executable."""
    for target, data in files.items():
        path = (early if target.startswith(EARLY_PREFIX) else staged) / target.lstrip("/")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        path.chmod(0o755 if target in EXECUTABLE else 0o644)


def mmdebstrap_argv(
    recipe: RootfsRecipe,
    mirror: str,
    root: Path,
    archives: Path,
    staged: Path,
    early: Path | None = None,
    reports: Path | None = None,
    signing: SigningKey | None = None,
) -> list[str]:
    """The whole mmdebstrap command line. ``archives`` keeps the .debs between builds;
    ``early`` holds the files that must be in place before the packages are installed
    (initramfs-tools scripts: the kernel's postinst builds the initrd with them);
    ``signing`` the pair a layer's DKMS modules are signed with."""
    q = shlex.quote
    include = [recipe.kernel_include, *recipe.packages]
    argv = [
        "mmdebstrap",
        "--mode=root",
        f"--variant={recipe.variant}",
        "--format=directory",
        f"--components={','.join(recipe.all_components)}",
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
    if early is not None:
        # After the Essential packages, before --include (the kernel, initramfs-tools).
        argv.append(f"--essential-hook=sync-in {q(str(early))} /")
    if recipe.layer is not None:
        if reports is None:
            raise ValueError("a layer's build needs a folder for its reports")
        # First: the base's own hooks drop resolv.conf, which apt in the chroot needs.
        hooks = layer_hooks(recipe.layer, reports, signing)
        argv += [f"--customize-hook={hook}" for hook in hooks]
    argv += [f"--customize-hook={hook}" for hook in customize_commands(recipe, staged)]
    argv += [
        f"--customize-hook=sync-out /var/cache/apt/archives {q(str(archives))}",
        # The .debs are kept outside; the image ships without them.
        '--customize-hook=rm -f "$1"/var/cache/apt/archives/*.deb',
        recipe.suite,
        str(root),
        *sources_lines(
            mirror, recipe.suite, recipe.all_components, recipe.updates, recipe.extra_suites
        ),
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
    layer: dict[str, Any] | None = None  # a layer recipe's part (layer_report)

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


def source_date_epoch() -> int:
    """``$SOURCE_DATE_EPOCH`` or a fixed instant: the image's file and squashfs times."""
    value = os.environ.get("SOURCE_DATE_EPOCH", "")
    return int(value) if value.isdigit() else DEFAULT_SOURCE_DATE_EPOCH


def _stream(argv: list[str], progress: Callable[[str], None], prefix: str) -> None:
    """Run ``argv``, passing its status lines to ``progress``; a failure is ImageError."""
    env = {
        **os.environ,
        "LC_ALL": "C.UTF-8",
        "LANG": "C.UTF-8",
        "SOURCE_DATE_EPOCH": str(source_date_epoch()),
    }
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


MODULE_SUFFIXES = ("", ".xz", ".zst", ".gz")  # Debian 13 compresses its modules (.ko.xz)


def initrd_has(listing: Iterable[str], member: str) -> bool:
    """Whether an initrd's file list (lsinitramfs) holds ``member``: under / or /usr
    (merged /usr), and a kernel module (``.ko``) compressed too."""
    suffixes = MODULE_SUFFIXES if member.endswith(".ko") else ("",)
    wanted = {f"{prefix}{member}{suffix}" for prefix in ("", "usr/") for suffix in suffixes}
    return not wanted.isdisjoint(listing)


def _require_in_initrd(
    root: Path, release: str, member: str, why: str = "the fetched root would go unchecked"
) -> None:
    """Refuse an initrd without ``member`` (lsinitramfs of the image's own tools)."""
    listing = subprocess.run(
        ["chroot", str(root), "lsinitramfs", f"/boot/initrd.img-{release}"],
        capture_output=True, text=True, check=True,
    ).stdout.split()  # fmt: skip
    if not initrd_has(listing, member):
        raise ImageError(f"the initrd lacks {member}: {why}")


def build_rootfs(
    recipe: Path, store: Path, cache: Path, progress: Callable[[str], None]
) -> Manifest:
    """Build ``store/<name>@<version>/{vmlinuz,initrd,root.squashfs,manifest.json}``.

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
    except OSError as exc:
        raise ImageError(f"cannot create work folders in {cache}: {exc}") from exc
    # DKMS signs a layer's modules with the control node's own pair (module_signing.py)
    signing = None
    if spec.layer is not None and spec.layer.dkms:
        signing = ensure_signing_key(signing_dir(store))
        progress(f"module signing key: {signing.certificate} (sha256 {signing.fingerprint})")
    images = ImageStore(store)
    staging = images.staging(spec.name)
    try:
        staged, early, reports = scratch / "staged", scratch / "early", scratch / "reports"
        staged.mkdir()
        early.mkdir()
        reports.mkdir()
        stage(staged_files(spec), staged, early)
        before = _debs(archives)
        root = scratch / "root"
        progress(f"mmdebstrap: {spec.suite} ({spec.variant}) from {mirror}")
        t0 = time.monotonic()
        _stream(
            mmdebstrap_argv(spec, mirror, root, archives, staged, early, reports, signing),
            progress,
            "mmdebstrap",
        )
        mmdebstrap_seconds = round(time.monotonic() - t0, 2)
        after = _debs(archives)
        download = sum(size for name, size in after.items() if name not in before)
        progress(f"mmdebstrap: done in {mmdebstrap_seconds} s, downloaded {download} bytes")
        release = kernel_release(p.name for p in (root / "boot").iterdir())
        if spec.root_check is not None:
            _require_in_initrd(root, release, ROOT_CHECK_PATH.removeprefix("/etc/initramfs-tools/"))
        if spec.netconsole is not None:
            silent = "the node's kernel messages would not reach the control node"
            script = NETCONSOLE_PATH.removeprefix("/etc/initramfs-tools/")
            module = f"lib/modules/{release}/kernel/drivers/net/netconsole.ko"
            _require_in_initrd(root, release, script, silent)
            _require_in_initrd(root, release, module, silent)
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
        layer = None
        if spec.layer is not None:
            layer = layer_report(spec.layer, root, release, reports, packages)
            progress(
                f"layer {spec.name}: {len(layer['packages'])} packages, "
                f"{layer['added_bytes']} bytes on {layer['base_packages']} of the base; "
                + (", ".join(f"{m} {v['vermagic'].split()[0]}" for m, v in layer["modules"].items())
                   or "no modules required")
            )  # fmt: skip
            guardrails.refuse_errors(
                spec.name,
                guardrails.check_layer(spec.name, layer["added_bytes"], layer["max_bytes"]),
            )
        root_bytes = _tree_bytes(root)
        progress(f"mksquashfs: {root_bytes} bytes, {spec.compression}")
        _stream(
            ["mksquashfs", str(root), str(staging / "root.squashfs"), "-noappend",
             "-comp", spec.compression, "-e", "boot", "-no-progress", "-quiet",
             "-mkfs-time", str(source_date_epoch()), "-all-time", str(source_date_epoch())],
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
            layer=layer,
        )
        (staging / "manifest.json").write_text(manifest.to_json())
        for finding in guardrails.check_initrd(manifest.initrd.size):
            progress(f"{finding.level}: {finding.reason}")
        guardrails.refuse_errors(spec.name, guardrails.check_initrd(manifest.initrd.size))
        image, new = images.publish(staging, spec.name)
    except (OSError, subprocess.CalledProcessError) as exc:
        raise ImageError(f"cannot build the image {spec.name}: {exc}") from exc
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
        shutil.rmtree(staging, ignore_errors=True)
    progress(
        f"done: {image.ref}{'' if new else ' (unchanged: same files as before)'} in "
        f"{image.path} (squashfs {manifest.squashfs.size} bytes, initrd {manifest.initrd.size}"
        f" bytes, built in {manifest.build_seconds} s)"
    )
    log.info("built %s: squashfs %d bytes", image.ref, manifest.squashfs.size)
    return manifest
