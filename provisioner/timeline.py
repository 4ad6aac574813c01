"""A node's boot steps, read off its timeline: what `lab`, `enroll --wait` and people see.

Pure: registry events in, the steps reached (in boot order) out::

    powered   a power driver powered it on or cycled it (enroll)
    dhcp      we answered its DHCP/PXE request
    tftp      an iPXE binary went out over TFTP (not on an iPXE-flashed NIC)
    ipxe      iPXE asked for its script by DHCP
    script    its discovery script was served
    kernel    vmlinuz fetched       initrd    initrd fetched
    inventory the discovery agent reported
    profile   fingerprinting gave it a profile
    image     its image's script was served (it is enrolled)
    root      its image's root.squashfs fetched
    keys      the image fetched the control node's SSH key
    ready     the image's agent reported (after the image's script)
"""

from __future__ import annotations

from collections.abc import Iterable

from provisioner.records import Event, EventKind

DISCOVERY_STEPS = ("dhcp", "tftp", "ipxe", "script", "kernel", "initrd", "inventory")
IMAGE_STEPS = ("image", "root", "keys", "ready")
STEPS = ("powered", *DISCOVERY_STEPS, "profile", *IMAGE_STEPS)


def steps_reached(events: Iterable[Event]) -> list[str]:
    """The boot steps a node's timeline shows, in boot order (see the module docstring)."""
    seen: set[str] = set()
    for e in events:
        detail = e.detail
        if e.kind is EventKind.POWER and detail.get("ok", True):
            seen.add("powered")
        elif e.kind is EventKind.DHCP_REPLY:
            seen.add("dhcp")
        elif e.kind is EventKind.DHCP and detail.get("client") == "ipxe":
            seen.add("ipxe")
        elif e.kind is EventKind.TFTP and detail.get("ok"):
            seen.add("tftp")
        elif e.kind is EventKind.SCRIPT:
            seen.add("image" if detail.get("boot") == "image" else "script")
        elif e.kind is EventKind.HTTP_FILE:
            name = str(detail.get("file", ""))
            if name.endswith("/vmlinuz"):
                seen.add("kernel")
            elif name.endswith("/initrd"):
                seen.add("initrd")
            elif name.endswith(".squashfs"):
                seen.add("root")
        elif e.kind is EventKind.KEYS:
            seen.add("keys")
        elif e.kind is EventKind.INVENTORY:
            seen.add("ready" if "image" in seen else "inventory")
        elif e.kind is EventKind.PROFILE and detail.get("profile"):
            seen.add("profile")
    return [s for s in STEPS if s in seen]


def last_step(events: Iterable[Event]) -> str | None:
    steps = steps_reached(events)
    return steps[-1] if steps else None
