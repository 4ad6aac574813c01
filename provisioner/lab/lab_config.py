"""What a lab's appliance is configured with (its provisioner.toml, from its segment and
options) and the site DHCP server that proxy-mode labs put beside it (dnsmasq's argv)."""

from __future__ import annotations

import shutil
from pathlib import Path

import tomlkit

from provisioner.config import Mode, render_config
from provisioner.lab.segment import Segment
from provisioner.lab.state import LabState

HTTP_PORT = 8080
LAB_KERNEL_ARGS = "console=ttyS0,115200n8 provisioner.after=poweroff"


def lab_config(
    mode: Mode,
    state_dir: Path,
    image: str | None = None,
    profiles: str | None = None,
    lab: LabState | None = None,  # its segment and registry (None: the defaults)
) -> str:
    segment = lab.segment if lab is not None else Segment.parse()
    text = render_config(
        interface="eth0",
        address=str(segment.interface(segment.server)),
        mode=mode,
        dhcp_range=segment.dhcp_range if mode is Mode.FULL else None,
        state_dir=state_dir,
        http_port=HTTP_PORT,
    )
    default_args = 'kernel_args = "console=tty0 console=ttyS0,115200n8"'
    # snponly.efi drives the NIC through OVMF's own driver: ~2.5 s less per UEFI boot here.
    text = text.replace('efi_binary = "ipxe.efi"', 'efi_binary = "snponly.efi"')
    text = text.replace(default_args, f'kernel_args = "{LAB_KERNEL_ARGS}"')
    doc = tomlkit.parse(text)
    if image is not None:
        # `lab up` enrolls its nodes (enroll --power-cycle): each is enrolled as soon as
        # it matches, and told to reboot into ``image`` when its report is in.
        boot = doc["boot"]
        assert isinstance(boot, tomlkit.items.Table)
        boot["image"] = image
    if profiles is not None:
        # `lab up --profiles DIR`: the lab's nodes fingerprinted against profiles being
        # written (their drivers, image and engines tried on lab nodes first).
        cluster = doc["cluster"]
        assert isinstance(cluster, tomlkit.items.Table)
        cluster["profiles"] = profiles
    if lab is not None and lab.registry_url is not None:
        # `lab up --registry-url`: this lab's serve is one segment's of a site (scale.md).
        doc["registry"] = {"url": lab.registry_url}
    return tomlkit.dumps(doc)


def site_dhcp_argv(
    first: str, last: str, workdir: Path, *, ping: bool = True, netmask: str = "255.255.255.0"
) -> list[str]:
    """dnsmasq as a site's DHCP server on eth0: addresses only, no PXE options at all."""
    argv = [
        shutil.which("dnsmasq") or "/usr/sbin/dnsmasq",
        "--no-daemon",
        "--conf-file=/dev/null",
        "--port=0",
        "--interface=eth0",
        "--bind-interfaces",
        "--log-dhcp",
        f"--dhcp-range={first},{last},{netmask},1h",
        f"--dhcp-leasefile={workdir / 'site.leases'}",
        f"--pid-file={workdir / 'site.pid'}",
    ]
    return argv if ping else [*argv, "--no-ping"]
