"""Where a container node's processes live on the host (pure): the cgroup hierarchies its
systemd needs (from ``/proc/self/mounts``), the argv that puts systemd-nspawn there (a
transient scope where systemd is PID 1, else a shell that moves itself first), and the
inotify instances that many booted containers need. :mod:`.containers` runs them."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path

INOTIFY_FREE_NODES = 20  # Debian's default of 128 instances holds this many containers
INOTIFY_PER_NODE = 16  # a booted container holds ~6; room for logins and post-install
INOTIFY_BASE = 128  # Debian's default, left for the host's own use


def cgroup_roots(mounts: str) -> list[Path]:
    """The hierarchies a container's cgroup is made in, from ``/proc/self/mounts``.

    systemd in the container needs its own cgroup in the name=systemd hierarchy (a
    cgroup v1 host or a hybrid one) and in the unified one (cgroup2) where mounted.
    """
    roots = []
    for line in mounts.splitlines():
        fields = line.split()
        if len(fields) < 4:
            continue
        mount, fstype, options = fields[1], fields[2], fields[3].split(",")
        if fstype == "cgroup2" or (fstype == "cgroup" and "name=systemd" in options):
            roots.append(Path(mount))
    return roots


def cgroup_dirs(roots: Iterable[Path], name: str) -> list[Path]:
    return [root / name for root in roots]


def in_cgroups_argv(cgroups: Sequence[Path], argv: Sequence[str]) -> list[str]:
    """``argv`` run from a shell that first moves itself into ``cgroups`` (then execs:
    the PID stays the same). For hosts where systemd is not PID 1."""
    move = 'n=$1; shift; while [ "$n" -gt 0 ]; do echo $$ >"$1" || exit 125; shift; '
    move += "n=$((n - 1)); done; exec " + '"$@"'
    procs = [str(path / "cgroup.procs") for path in cgroups]
    return ["sh", "-c", move, "sh", str(len(procs)), *procs, *argv]


def scope_argv(unit: str, argv: Sequence[str]) -> list[str]:
    """``argv`` in a transient scope of its own, where systemd is PID 1 (same PID)."""
    return ["systemd-run", "--scope", "--quiet", f"--unit={unit}", "--", *argv]


def inotify_needed(nodes: int, current: int) -> int | None:
    """The ``max_user_instances`` to set for ``nodes`` containers, or None if enough
    (up to 20 nodes the default does; the limit is never lowered)."""
    if nodes <= INOTIFY_FREE_NODES:
        return None
    wanted = INOTIFY_BASE + INOTIFY_PER_NODE * nodes
    return wanted if wanted > current else None
