"""IPMI 2.0 over LAN (RMCP+), through Debian's ``ipmitool -I lanplus``.

Why ipmitool and not pyghmi: it is the tool every BMC vendor tests against, it ships in
Debian (``apt-get install ipmitool``), and a subprocess gives each operation a hard
wall-clock limit (pyghmi keeps one shared session thread per process, whose retry
schedule we could not bound per node). The password never appears on the command
line: it goes in ``IPMI_PASSWORD`` with ``-E``.

A one-time network boot is ``chassis bootdev pxe``, plus ``options=efiboot`` for a UEFI
node: ipmitool then sets the "EFI boot" bit of the boot flags (parameter 5; data
``a0 04`` instead of ``80 04``). IPMI has no "keep the mode": without the bit the flags
say "PC compatible (legacy)", so a node whose mode is not known gets the plain command,
as before, and the log says what that means.

``ipmitool_argv``, ``sol_argv``, ``bootdev_command`` and ``classify`` are pure; :class:`IpmiDriver`
runs the command.
"""

from __future__ import annotations

import logging
import re
import subprocess
from collections.abc import Sequence

from provisioner.power.base import (
    BmcAuthError,
    BmcUnreachable,
    PowerError,
    PowerState,
)
from provisioner.power.bootmode import BootMode, BootModeChoice, decide_boot_mode
from provisioner.power.credentials import Secret
from provisioner.power.settings import IPMI_PORT, PowerSettings

log = logging.getLogger(__name__)

IPMITOOL = "ipmitool"
_STATUS = re.compile(r"Chassis Power is (on|off)", re.IGNORECASE)

# What ipmitool -v prints on stderr -> the cause in words (first match wins).
_CAUSES: tuple[tuple[str, type[PowerError], str], ...] = (
    ("RAKP 2 HMAC is invalid", BmcAuthError, "wrong password"),
    ("unauthorized name", BmcAuthError, "unknown user name"),
    ("insufficient resources for session", PowerError, "the BMC has no free session"),
    ("Address lookup for", BmcUnreachable, "BMC host name does not resolve"),
    ("Could not open socket", BmcUnreachable, "cannot reach the BMC's address (no route?)"),
    ("Get Auth Capabilities error", BmcUnreachable, "no answer from the BMC"),
    ("No response from remote controller", BmcUnreachable, "no answer from the BMC"),
    ("invalid authentication algorithm", PowerError, "cipher suite not supported by the BMC"),
    ("Unable to establish IPMI v2", BmcUnreachable, "no IPMI 2.0 session (address, port?)"),
)


def ipmitool_argv(settings: PowerSettings, command: Sequence[str], timeout: float) -> list[str]:
    """The ipmitool command line for one command (no password: it goes in the env)."""
    retries = 1
    per_try = max(1, int(timeout / (retries + 1)) - 1)
    argv = [
        IPMITOOL,
        "-v",  # says why a session failed (wrong password vs no answer)
        "-I",
        "lanplus",
        "-H",
        str(settings.host),
        "-p",
        str(settings.port or IPMI_PORT),
        "-U",
        settings.user or "",
        "-E",
        "-N",
        str(per_try),
        "-R",
        str(retries),
    ]
    if settings.cipher is not None:
        argv += ["-C", str(settings.cipher)]
    return [*argv, *command]


def sol_argv(settings: PowerSettings) -> list[str]:
    """``ipmitool ... sol activate``: the node's serial console over the LAN, interactive
    (no timeouts, no -v). The password goes in ``IPMI_PASSWORD`` (``-E``), never here."""
    argv = [IPMITOOL, "-I", "lanplus", "-H", str(settings.host)]
    argv += ["-p", str(settings.port or IPMI_PORT), "-U", settings.user or "", "-E"]
    if settings.cipher is not None:
        argv += ["-C", str(settings.cipher)]
    return [*argv, "sol", "activate"]


def bootdev_command(mode: BootMode | None) -> list[str]:
    """ipmitool's words for "boot from the network, next boot only" in ``mode``."""
    command = ["chassis", "bootdev", "pxe"]
    return [*command, "options=efiboot"] if mode is BootMode.UEFI else command


def classify(stderr: str, returncode: int) -> PowerError:
    """ipmitool's failure output -> the error to raise, with a one-line cause."""
    for needle, kind, cause in _CAUSES:
        if needle.lower() in stderr.lower():
            return kind(cause)
    lines = [
        ln.strip()
        for ln in stderr.splitlines()
        if ln.strip() and not ln.startswith(("Loading IANA", "Running Get", ">"))
    ]
    return PowerError(f"ipmitool exited {returncode}: {lines[-1] if lines else 'no output'}")


def parse_status(stdout: str) -> PowerState:
    found = _STATUS.search(stdout)
    if found is None:
        raise PowerError(f"cannot read the power state from ipmitool: {stdout.strip()!r}")
    return PowerState(found.group(1).lower())


class IpmiDriver:
    kind = "ipmi"

    def __init__(
        self,
        settings: PowerSettings,
        password: Secret,
        *,
        timeout: float,
        node: str | None = None,
        boot_mode: BootModeChoice | None = None,
    ):
        self.settings = settings
        self._password = password
        self.timeout = timeout
        self.node = node or settings.target
        self.boot_mode = boot_mode or decide_boot_mode(settings.boot_mode, None)

    def _run(self, *command: str) -> str:
        argv = ipmitool_argv(self.settings, command, self.timeout)
        env = {"IPMI_PASSWORD": self._password.reveal(), "PATH": "/usr/sbin:/usr/bin:/sbin:/bin"}
        log.debug("ipmi bmc=%s %s", self.settings.target, " ".join(command))
        try:
            done = subprocess.run(
                argv,
                env=env,
                capture_output=True,
                text=True,
                timeout=self.timeout,
                stdin=subprocess.DEVNULL,
                check=False,
            )
        except FileNotFoundError as exc:
            raise PowerError("ipmitool is not installed (apt-get install ipmitool)") from exc
        except subprocess.TimeoutExpired as exc:
            raise BmcUnreachable(f"no answer from the BMC in {self.timeout:.0f} s") from exc
        except OSError as exc:
            raise PowerError(f"cannot run ipmitool: {exc}") from exc
        if done.returncode != 0:
            raise classify(done.stderr, done.returncode)
        return done.stdout

    def status(self) -> PowerState:
        return parse_status(self._run("chassis", "power", "status"))

    def on(self) -> None:
        self._run("chassis", "power", "on")

    def off(self) -> None:
        self._run("chassis", "power", "off")

    def cycle(self) -> None:
        # IPMI's "power cycle" does nothing on a chassis that is off: power it on instead
        if self.status() is PowerState.OFF:
            self.on()
        else:
            self._run("chassis", "power", "cycle")

    def boot_next_network(self) -> None:
        mode = self.boot_mode.mode
        if mode is None:
            log.info(
                "node=%s: network boot once, boot type not named (%s); IPMI reads that as "
                "legacy: set boot_mode=uefi in the power URL for a UEFI-only board",
                self.node,
                self.boot_mode.why,
            )
        else:
            log.info(
                "node=%s: network boot once in %s mode (%s)", self.node, mode, self.boot_mode.why
            )
        self._run(*bootdev_command(mode))
