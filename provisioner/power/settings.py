"""Power URLs: one string per node, stored in the registry, never holding a password.

::

    redfish://USER@HOST[:PORT][/redfish/v1/Systems/ID][?verify=no]   HTTPS (port 443)
    redfish+http://USER@HOST[:PORT][/redfish/v1/Systems/ID]          plain HTTP (labs)
    ipmi://USER@HOST[:PORT][?cipher=3]                               IPMI 2.0 LAN (623)
        ... &boot_mode=uefi|legacy|auto   (ipmi, redfish) the one-time network boot's mode
    wol://MAC[?interface=eth1][&broadcast=10.0.0.255][&port=9]       Wake-on-LAN
    qemu:///PATH/TO/QMP.SOCK                                         a QEMU VM's QMP socket
    manual:                                                          a person presses power

``verify=no`` is the explicit opt-out of TLS certificate checks (a BMC with a
self-signed certificate); without it certificates are checked. Without a system path,
Redfish uses the BMC's only system (and refuses to guess between several).
``boot_mode`` (default ``auto``: from the firmware the node was seen with) says which
firmware mode "boot from the network once" asks for (:mod:`.bootmode`).

:func:`parse_power_url` is pure; :attr:`PowerSettings.url` gives the canonical form
back (what ``node add`` stores).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import StrEnum
from urllib.parse import parse_qsl, quote, unquote, urlsplit

from provisioner.power.base import PowerSettingsError
from provisioner.power.bootmode import BootMode, parse_boot_mode

IPMI_PORT = 623
WOL_PORT = 9
HTTPS_PORT = 443
HTTP_PORT = 80
_MAC = re.compile(r"^[0-9a-f]{2}([:-][0-9a-f]{2}){5}$")
_IFACE = re.compile(r"^[A-Za-z0-9_.:@-]{1,15}$")
_NO = ("no", "false", "0", "off")
_YES = ("yes", "true", "1", "on")


class DriverKind(StrEnum):
    IPMI = "ipmi"
    REDFISH = "redfish"
    WOL = "wol"
    QEMU = "qemu"
    MANUAL = "manual"


@dataclass(frozen=True)
class PowerSettings:
    """Where and how to reach one node's power control (no secrets in here)."""

    driver: DriverKind
    host: str | None = None
    port: int | None = None
    user: str | None = None
    path: str | None = None  # redfish: the system's path; qemu: the QMP socket
    verify_tls: bool = True  # redfish over HTTPS: check the BMC's certificate
    plain_http: bool = False  # redfish+http://
    cipher: int | None = None  # ipmi: the RMCP+ cipher suite (None: let ipmitool pick)
    boot_mode: BootMode | None = None  # ipmi, redfish: network boot mode (None: auto)
    mac: str | None = None  # wol: the node's MAC
    interface: str | None = None  # wol: the interface to send on
    broadcast: str = "255.255.255.255"  # wol: where to send
    wol_port: int = WOL_PORT

    @property
    def needs_password(self) -> bool:
        return self.driver in (DriverKind.IPMI, DriverKind.REDFISH)

    @property
    def url(self) -> str:
        """The canonical URL (what the registry stores): never a password."""
        if self.driver is DriverKind.MANUAL:
            return "manual:"
        if self.driver is DriverKind.QEMU:
            return f"qemu://{self.path}"
        if self.driver is DriverKind.WOL:
            query = []
            if self.interface:
                query.append(f"interface={self.interface}")
            if self.broadcast != "255.255.255.255":
                query.append(f"broadcast={self.broadcast}")
            if self.wol_port != WOL_PORT:
                query.append(f"port={self.wol_port}")
            return f"wol://{self.mac}" + (f"?{'&'.join(query)}" if query else "")
        scheme = "redfish+http" if self.plain_http else self.driver.value
        host = f"[{self.host}]" if self.host and ":" in self.host else self.host
        user = f"{quote(self.user, safe='')}@" if self.user else ""
        port = f":{self.port}" if self.port is not None else ""
        query = []
        if not self.verify_tls:
            query.append("verify=no")
        if self.cipher is not None:
            query.append(f"cipher={self.cipher}")
        if self.boot_mode is not None:
            query.append(f"boot_mode={self.boot_mode.value}")
        path = self.path or ""
        return f"{scheme}://{user}{host}{port}{path}" + (f"?{'&'.join(query)}" if query else "")

    @property
    def target(self) -> str:
        """Where the power control lives, for messages: host[:port], MAC or socket."""
        if self.driver is DriverKind.WOL:
            return f"{self.mac} via {self.interface or 'any interface'}"
        if self.driver is DriverKind.QEMU:
            return str(self.path)
        if self.driver is DriverKind.MANUAL:
            return "a person"
        return f"{self.host}:{self.port}" if self.port is not None else str(self.host)


def parse_power_url(url: str) -> PowerSettings:
    """A power URL -> PowerSettings; PowerSettingsError says what is wrong with it."""
    text = url.strip()
    scheme, sep, rest = text.partition(":")
    scheme = scheme.lower()
    if not sep:
        raise PowerSettingsError(
            f"power URL {_shown(url)!r}: want SCHEME:..., e.g. ipmi://admin@bmc"
        )
    if scheme == "manual":
        if rest.strip("/"):
            raise PowerSettingsError(f"power URL {_shown(url)!r}: manual takes nothing: 'manual:'")
        return PowerSettings(DriverKind.MANUAL)
    if scheme == "qemu":
        return _qemu(url, rest)
    if scheme == "wol":
        return _wol(url, rest)
    if scheme in ("ipmi", "redfish", "redfish+http", "redfish+https"):
        return _bmc(url, scheme)
    known = ", ".join(k.value for k in DriverKind)
    raise PowerSettingsError(
        f"power URL {_shown(url)!r}: unknown driver {scheme!r} (known: {known})"
    )


def _qemu(url: str, rest: str) -> PowerSettings:
    if not rest.startswith("//"):
        raise PowerSettingsError(f"power URL {_shown(url)!r}: want qemu:///path/to/qmp.sock")
    path = rest[2:]
    if not path.startswith("/") or "?" in path:
        raise PowerSettingsError(
            f"power URL {_shown(url)!r}: the QMP socket must be an absolute path"
        )
    return PowerSettings(DriverKind.QEMU, path=path)


def _wol(url: str, rest: str) -> PowerSettings:
    body, _, query = rest.removeprefix("//").partition("?")
    mac = body.strip("/").lower()
    if not _MAC.match(mac):
        raise PowerSettingsError(
            f"power URL {_shown(url)!r}: {mac!r} is not a MAC like aa:bb:cc:dd:ee:ff"
        )
    options = _query(url, query, {"interface", "broadcast", "port"})
    interface = options.get("interface")
    if interface is not None and not _IFACE.match(interface):
        raise PowerSettingsError(f"power URL {_shown(url)!r}: bad interface name {interface!r}")
    return PowerSettings(
        DriverKind.WOL,
        mac=mac.replace("-", ":"),
        interface=interface,
        broadcast=options.get("broadcast", "255.255.255.255"),
        wol_port=_port(url, options.get("port"), WOL_PORT),
    )


def _bmc(url: str, scheme: str) -> PowerSettings:
    parts = urlsplit(url.strip())
    if parts.password is not None:
        raise PowerSettingsError(
            f"power URL for {parts.hostname}: a password in the URL is refused; put it in "
            "the credentials file (mode 0600) or $PROVISIONER_POWER_PASSWORD_<NODE>"
        )
    if not parts.hostname:
        raise PowerSettingsError(f"power URL {_shown(url)!r}: no BMC host")
    try:
        port = parts.port
    except ValueError as exc:
        raise PowerSettingsError(f"power URL {_shown(url)!r}: bad port") from exc
    user = unquote(parts.username) if parts.username else None
    if scheme == "ipmi":
        options = _query(url, parts.query, {"cipher", "boot_mode"})
        if parts.path.strip("/"):
            raise PowerSettingsError(f"power URL {_shown(url)!r}: ipmi takes no path")
        cipher = options.get("cipher")
        if cipher is not None and not (cipher.isdigit() and int(cipher) <= 17):
            raise PowerSettingsError(
                f"power URL {_shown(url)!r}: cipher must be 0..17, not {cipher!r}"
            )
        return PowerSettings(
            DriverKind.IPMI,
            host=parts.hostname,
            port=port,
            user=user,
            cipher=int(cipher) if cipher is not None else None,
            boot_mode=_boot_mode(url, options.get("boot_mode")),
        )
    options = _query(url, parts.query, {"verify", "boot_mode"})
    verify = options.get("verify", "yes").lower()
    if verify not in _YES + _NO:
        raise PowerSettingsError(f"power URL {_shown(url)!r}: verify must be yes or no")
    path = parts.path.rstrip("/") or None
    if path is not None and not path.startswith("/redfish/v1/Systems/"):
        raise PowerSettingsError(
            f"power URL {_shown(url)!r}: the path must be a system, /redfish/v1/Systems/<id>"
        )
    return PowerSettings(
        DriverKind.REDFISH,
        host=parts.hostname,
        port=port,
        user=user,
        path=path,
        verify_tls=verify in _YES,
        plain_http=scheme == "redfish+http",
        boot_mode=_boot_mode(url, options.get("boot_mode")),
    )


def _boot_mode(url: str, text: str | None) -> BootMode | None:
    if text is None:
        return None
    try:
        return parse_boot_mode(text)
    except ValueError as exc:
        raise PowerSettingsError(
            f"power URL {_shown(url)!r}: boot_mode must be uefi, legacy or auto, not {text!r}"
        ) from exc


def _query(url: str, query: str, allowed: set[str]) -> dict[str, str]:
    options = dict(parse_qsl(query, keep_blank_values=True))
    unknown = sorted(set(options) - allowed)
    if unknown:
        raise PowerSettingsError(
            f"power URL {_shown(url)!r}: unknown option {', '.join(unknown)}"
            f" (allowed: {', '.join(sorted(allowed))})"
        )
    return options


def _port(url: str, text: str | None, default: int) -> int:
    if text is None:
        return default
    if not text.isdigit() or not 0 < int(text) < 65536:
        raise PowerSettingsError(f"power URL {_shown(url)!r}: bad port {text!r}")
    return int(text)


def _shown(url: str) -> str:
    """The URL for an error message, any password in it masked."""
    return re.sub(r"(//[^/@:?]*):[^/@?]*@", r"\1:***@", url.strip())
