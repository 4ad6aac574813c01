"""The boot policy: the one place that decides what a node boots.

Pure: (node, what the image store holds, config) -> BootSpec. The HTTP handler renders
the spec with a template from ``bootconf/``; nothing else makes this decision.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum

from provisioner.registry import Node
from provisioner.states import NodeState

DISCOVERY_IMAGE = "discovery"
KERNEL_FILE = "vmlinuz"
INITRD_FILE = "initrd"


class BootKind(StrEnum):
    DISCOVERY = "discovery"  # unknown or not yet enrolled: the discovery image and its agent
    IMAGE = "image"  # enrolled: its profile's image
    LOCAL = "local"  # boot from the local disk
    MISSING = "missing"  # the image it should boot is not built yet: wait and ask again


@dataclass(frozen=True)
class BootSpec:
    kind: BootKind
    image: str | None = None
    kernel: str = KERNEL_FILE
    initrd: str = INITRD_FILE
    cmdline: str = ""

    @property
    def template(self) -> str:
        if self.kind in (BootKind.DISCOVERY, BootKind.IMAGE):
            return "linux.ipxe.j2"
        return f"{self.kind.value}.ipxe.j2"


ImageExists = Callable[[str], bool]


def boot_spec(node: Node | None, image_exists: ImageExists, kernel_args: str) -> BootSpec:
    """What ``node`` (None: never seen) boots now."""
    state = node.state if node is not None else NodeState.NEW
    if state is NodeState.LOCAL:
        return BootSpec(BootKind.LOCAL)
    if state is NodeState.ENROLLED and node is not None and node.profile:
        image, kind = node.profile, BootKind.IMAGE
    else:
        image, kind = DISCOVERY_IMAGE, BootKind.DISCOVERY
    if not image_exists(image):
        return BootSpec(BootKind.MISSING, image=image)
    return BootSpec(kind, image=image, cmdline=kernel_args)
