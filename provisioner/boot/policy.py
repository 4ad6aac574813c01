"""The boot policy: the one place that decides what a node boots.

Pure: (node, what the image store holds, the image chosen for its profile, what we know of
its RAM and firmware, config) -> BootSpec. The HTTP handler renders the spec with a
template from ``bootconf/``; nothing else makes this decision.

Which image an enrolled node boots is :func:`provisioner.image.choice.image_for` (pure: the
enroller and the vLLM engine ask it too). A name without a version is its newest version;
the spec always names one version (``name@N``), so kernel, initrd and root of one boot come
from one build.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from enum import StrEnum

from provisioner.image import guardrails
from provisioner.image.store import StoredImage
from provisioner.records import Node
from provisioner.states import BOOTS_PROFILE_IMAGE, NodeState

DISCOVERY_IMAGE = "discovery"
KERNEL_FILE = "vmlinuz"
INITRD_FILE = "initrd"


class BootKind(StrEnum):
    DISCOVERY = "discovery"  # unknown or not yet enrolled: the discovery image and its agent
    IMAGE = "image"  # enrolled: its profile's image
    LOCAL = "local"  # boot from the local disk
    MISSING = "missing"  # the image it should boot is not built yet: wait and ask again
    REFUSED = "refused"  # the image cannot run on this node (RAM, firmware): wait, ask again


@dataclass(frozen=True)
class BootSpec:
    kind: BootKind
    image: str | None = None  # name@version; the name asked for when MISSING
    kernel: str = KERNEL_FILE
    initrd: str = INITRD_FILE
    squashfs: str | None = None  # the root fetched over HTTP (live-boot fetch=), if any
    root_sha256: str | None = None  # the squashfs's, from the manifest: the initrd checks it
    cmdline: str = ""
    reason: str = ""  # why, for MISSING and REFUSED

    @property
    def template(self) -> str:
        if self.kind in (BootKind.DISCOVERY, BootKind.IMAGE):
            return "linux.ipxe.j2"
        return f"{self.kind.value}.ipxe.j2"


FindImage = Callable[[str], StoredImage | None]


def wanted_image(node: Node | None, image: str) -> str | None:
    """The image ref ``node`` boots next (``image``: its profile's); None: its own disk."""
    state = node.state if node is not None else NodeState.NEW
    if state is NodeState.LOCAL:
        return None
    if state in BOOTS_PROFILE_IMAGE and node is not None and node.profile:
        return image
    return DISCOVERY_IMAGE


def boot_spec(
    node: Node | None,
    find_image: FindImage,
    kernel_args: str,
    *,
    image: str = DISCOVERY_IMAGE,
    profile_args: Sequence[str] = (),
    memory_bytes: int | None = None,
) -> BootSpec:
    """What ``node`` (None: never seen) boots now; ``image`` is its profile's image."""
    wanted = wanted_image(node, image)
    if wanted is None:
        return BootSpec(BootKind.LOCAL)
    if node is not None and node.state in BOOTS_PROFILE_IMAGE and node.profile:
        kind, args = BootKind.IMAGE, [kernel_args, *profile_args]
    else:
        kind, args = BootKind.DISCOVERY, [kernel_args]
    found = find_image(wanted)
    if found is None:
        return BootSpec(BootKind.MISSING, image=wanted, reason=f"no image {wanted} is built")
    firmware = node.firmware if node is not None else None
    findings = guardrails.check_initrd(found.size("initrd"), firmware)
    if found.squashfs is not None:
        findings += guardrails.check_ram(
            memory_bytes,
            squashfs=found.size("squashfs"),
            initrd=found.size("initrd"),
            kernel=found.size("vmlinuz"),
        )
    errors = [f.reason for f in findings if f.is_error]
    if errors:
        return BootSpec(BootKind.REFUSED, image=found.ref, reason="; ".join(errors))
    return BootSpec(
        kind,
        image=found.ref,
        squashfs=found.squashfs,
        root_sha256=found.digests().get("squashfs") if found.squashfs is not None else None,
        cmdline=" ".join(a for a in args if a),
    )
