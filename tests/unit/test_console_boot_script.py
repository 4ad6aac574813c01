"""The boot script tells the node's kernel where to send (bootconf/linux.ipxe.j2): the
word the initramfs reads (images/initramfs/provisioner-netconsole), and only when asked."""

from __future__ import annotations

import pytest

from provisioner.boot.ipxe import ScriptRenderer
from provisioner.boot.policy import BootKind, BootSpec
from provisioner.states import NodeState

MAC = "52:54:00:00:00:09"
LIVE = BootSpec(BootKind.IMAGE, image="debian-bookworm@2", squashfs="root.squashfs",
                root_sha256="ab" * 32, cmdline="console=ttyS0")  # fmt: skip
DISCOVERY = BootSpec(BootKind.DISCOVERY, image="discovery@7", cmdline="console=ttyS0")


def kernel_line(spec: BootSpec, port: int | None) -> list[str]:
    script = ScriptRenderer().render(
        spec, mac=MAC, state=NodeState.ENROLLED, base="http://10.30.0.1:8080", token="t0k",
        console_port=port,
    )  # fmt: skip
    (line,) = [ln for ln in script.splitlines() if ln.startswith("kernel ")]
    return line.split()


@pytest.mark.parametrize("spec", [LIVE, DISCOVERY])
def test_the_kernel_line_carries_the_console_port_when_consoles_are_kept(spec: BootSpec) -> None:
    words = kernel_line(spec, 6666)
    assert words.count("provisioner.netconsole=6666") == 1
    assert words[-3:] == ["||", "goto", "failed"]
    assert not any(w.startswith("provisioner.netconsole") for w in kernel_line(spec, None))
