"""The I/O side of a rolling image upgrade (:mod:`.roll` holds the plan and the loop): the
plan from the registry and the image store, and how a node is rebooted.

A node is rebooted by its power driver when it has power settings (a cycle, with a
one-time network boot where the BMC can), else by ``systemctl reboot`` over SSH: a
PXE-booted node boots over the network again either way, and takes its pinned version.
A ``manual:`` power setting is not used: a roll does not wait for a person at the rack.
"""

from __future__ import annotations

import contextlib

from provisioner.clusters.roll import RollPlan, RollRefused, plan_roll
from provisioner.clusters.site import Site
from provisioner.clusters.store import load_all
from provisioner.image.store import ImageRef, ImageStore
from provisioner.postinstall.ssh import SshError
from provisioner.power import UnsupportedOperation, open_driver
from provisioner.power.settings import DriverKind, parse_power_url
from provisioner.records import EventKind, Node

REBOOT_COMMAND = "systemctl --no-block reboot"  # queued: the command returns before sshd stops


def prepare(
    site: Site, profile: str, image: str | None, *, current: str | None, rollback: bool
) -> RollPlan:
    """The plan of ``image use IMAGE --profile P --rolling`` (or ``--rollback``);
    ``current``: the image the profile's nodes boot now, pins aside (name@version; None:
    not built), as the boot policy resolves it.

    Rollback: after a roll that stopped (its nodes still pinned), back to the profile's
    image, which the stopped roll never changed; else to the profile's previous image."""
    if profile not in site.profiles:
        have = ", ".join(site.profiles.names)
        raise RollRefused(f"no profile {profile!r} (have: {have})")
    store = ImageStore(site.cfg.image_dir)
    nodes = site.registry.nodes()
    mine = {n.mac for n in nodes if n.profile == profile}
    pinned = {mac for mac in site.registry.image_pins() if mac in mine}
    set_to: str | None
    if rollback:
        if pinned:
            if current is None:
                raise RollRefused(f"{profile}: its image is not built: nothing to roll back to")
            target, set_to, previous = current, None, None
        else:
            before = site.registry.previous_profile_image(profile)
            if before is None:
                raise RollRefused(
                    f"{profile}: no earlier image is recorded (image use sets one): "
                    "nothing to roll back to"
                )
            target, set_to, previous = store.get(before).ref, before, current
    else:
        if image is None:
            raise RollRefused("give the image to roll to (IMAGE or IMAGE@VERSION)")
        target = store.get(ImageRef.parse(image)).ref  # refuses an image that is not built
        set_to, previous = image, current
    return plan_roll(
        profile,
        target,
        nodes,
        load_all(site.registry),
        profile_image=set_to,
        previous=previous,
    )


def reboot_node(site: Site, node: Node, *, timeout: float = 10.0) -> str:
    """Reboot ``node`` (see the module's docstring); how it was done."""
    name = node.hostname or node.mac
    url = site.registry.power(node.mac)
    settings = parse_power_url(url) if url else None
    if settings is not None and settings.driver is not DriverKind.MANUAL:
        driver = open_driver(
            settings,
            node=name,
            state_dir=site.cfg.state_dir,
            timeout=timeout,
            firmware=node.firmware,
        )
        with contextlib.suppress(UnsupportedOperation):  # WoL: the board boots the network
            driver.boot_next_network()
        driver.cycle()
        site.registry.add_event(node.mac, EventKind.POWER, {"op": "cycle", "ok": True})
        return f"power cycle ({settings.driver.value})"
    with site.connect(node) as conn:
        try:
            done = conn.run(REBOOT_COMMAND, timeout=30)
        except SshError:  # the session went down with the node: it is rebooting
            return "systemctl reboot over SSH"
        if not done.ok:
            raise SshError(f"{name}: {REBOOT_COMMAND}: {done.output(400)}")
    return "systemctl reboot over SSH"
