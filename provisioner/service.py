"""`provisioner serve` as a systemd service: readiness notices, journald logs, the unit.

Three parts, apart from the CLI (cli/service.py parses and prints):

- :class:`Notifier`: the ``sd_notify(3)`` protocol, written here (one datagram on the
  AF_UNIX socket named by ``$NOTIFY_SOCKET``; no library, no libsystemd). serve sends
  ``READY=1`` once every port is bound, ``RELOADING=1`` then ``READY=1`` around a
  SIGHUP reload, ``STOPPING=1`` when it stops, and ``STATUS=`` lines for ``systemctl
  status``. Outside systemd it does nothing.
- :func:`use_journal_format`: under journald (stderr is the stream ``$JOURNAL_STREAM``
  names) log lines lose their timestamp (the journal stamps them) and gain a ``<N>``
  syslog priority prefix, which journald turns into the entry's priority.
- :func:`render_unit` (pure) and :func:`install_unit`: the unit file, generated from a
  template in this module, not shipped as a file: its variable parts (interpreter,
  config, state folders) must be quoted for systemd, and this keeps them next to their
  escaping and tests. Only ``Type=notify`` (systemd 252, Debian 12, has no
  ``notify-reload``): ``ExecReload`` sends SIGHUP, serve reports the reload itself.

Errors: :class:`ServiceError` (a :class:`~provisioner.errors.ProvisionerError`).
"""

from __future__ import annotations

import logging
import os
import re
import socket
import subprocess
import sys
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from provisioner.config import Config
from provisioner.errors import ProvisionerError

log = logging.getLogger(__name__)

UNIT_NAME = "provisioner.service"
DEFAULT_UNIT_DIR = Path("/etc/systemd/system")
SYSTEMD_BOOTED = Path("/run/systemd/system")  # sd_booted(3): systemd is PID 1 here
# What serve needs beyond an unprivileged process, and why (docs/service.md):
#   CAP_NET_BIND_SERVICE  DHCP 67, TFTP 69, PXE 4011, HTTP 80 when configured so
#   CAP_NET_RAW           the raw ICMPv6 socket of router advertisements (boot/ra.py);
#                         SO_BINDTODEVICE on the DHCP sockets before Linux 5.7
#   CAP_NET_ADMIN         SO_RCVBUFFORCE (a 4 MiB DHCP receive buffer past rmem_max)
CAPABILITIES = ("CAP_NET_BIND_SERVICE", "CAP_NET_RAW", "CAP_NET_ADMIN")
_PLAIN = re.compile(r"[A-Za-z0-9/._+:@,=-]+")  # a word that needs no quotes
HOME_DIRS = (PurePosixPath("/home"), PurePosixPath("/root"), PurePosixPath("/run/user"))


class ServiceError(ProvisionerError):
    """The service could not be installed (unit not written, systemd refused a reload)."""


# ------------------------------------------------------------------ sd_notify


class Notifier:
    """Sends sd_notify(3) messages to ``address`` (``$NOTIFY_SOCKET``); None: no-op.

    A failed send is logged and ignored: a notice is never worth stopping the service
    (systemd then times the start out, and says so).
    """

    def __init__(self, address: str | None) -> None:
        self.address = address or None

    @classmethod
    def from_environ(cls, environ: Mapping[str, str] | None = None) -> Notifier:
        """The socket systemd gave this process; removed from ``os.environ`` when read
        from it, so that the commands serve runs (ssh, ipmitool) do not inherit it."""
        if environ is None:
            return cls(os.environ.pop("NOTIFY_SOCKET", None))
        return cls(environ.get("NOTIFY_SOCKET"))

    @property
    def enabled(self) -> bool:
        return self.address is not None

    def send(self, *fields: str) -> bool:
        """One datagram of ``KEY=value`` lines; True if it was sent."""
        if self.address is None:
            return False
        target = self.address
        if target.startswith("@"):  # an abstract socket
            target = "\0" + target[1:]
        message = "\n".join(f.replace("\n", " ") for f in fields).encode()
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as s:
                s.connect(target)
                s.sendall(message)
        except OSError as exc:
            log.warning("sd_notify to %s failed: %s", self.address, exc)
            return False
        return True

    def status(self, text: str) -> bool:
        return self.send(f"STATUS={text}")

    def ready(self, status: str) -> bool:
        return self.send("READY=1", f"STATUS={status}")

    def reloading(self, status: str = "reloading profiles") -> bool:
        # MONOTONIC_USEC: what Type=notify-reload (systemd 253+) wants with RELOADING=1.
        usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        return self.send("RELOADING=1", f"MONOTONIC_USEC={usec}", f"STATUS={status}")

    def stopping(self, status: str = "stopping") -> bool:
        return self.send("STOPPING=1", f"STATUS={status}")


# ------------------------------------------------------------------ journald logging

# logging level -> syslog priority, which journald reads from a "<N>" line prefix.
PRIORITIES = {
    logging.CRITICAL: 2,
    logging.ERROR: 3,
    logging.WARNING: 4,
    logging.INFO: 6,
    logging.DEBUG: 7,
}
JOURNAL_FORMAT = "%(name)s: %(message)s"  # no time, no level: the journal has both


class JournalFormatter(logging.Formatter):
    """``<priority>name: message``; each line of a multi-line record gets the prefix."""

    def __init__(self) -> None:
        super().__init__(JOURNAL_FORMAT)

    def format(self, record: logging.LogRecord) -> str:
        priority = next((p for level, p in PRIORITIES.items() if record.levelno >= level), 7)
        text = super().format(record)
        return "\n".join(f"<{priority}>{line}" for line in text.splitlines() or [""])


def journal_stream(environ: Mapping[str, str], stderr_fd: int = 2) -> bool:
    """Is stderr the journal? ``$JOURNAL_STREAM`` is ``device:inode`` of the stream
    systemd connected; a child whose stderr was redirected inherits the variable too,
    so the two are compared (as systemd.exec(5) advises)."""
    value = environ.get("JOURNAL_STREAM", "")
    device, _, inode = value.partition(":")
    if not (device.isdigit() and inode.isdigit()):
        return False
    try:
        st = os.fstat(stderr_fd)
    except OSError:
        return False
    return (st.st_dev, st.st_ino) == (int(device), int(inode))


def use_journal_format(
    environ: Mapping[str, str] | None = None, root: logging.Logger | None = None
) -> bool:
    """Under journald, switch the root logger's stream handlers to JournalFormatter."""
    if not journal_stream(os.environ if environ is None else environ):
        return False
    for handler in (root or logging.getLogger()).handlers:
        if isinstance(handler, logging.StreamHandler):
            handler.setFormatter(JournalFormatter())
    return True


# ------------------------------------------------------------------ the unit (pure)

UNIT_TEMPLATE = """\
# {unit_name}: written by `provisioner service install`; run it again to rewrite.
# docs/service.md says what each hardening line allows and why.
[Unit]
Description=provisioner: DHCP, TFTP and HTTP boot services for a bare-metal cluster
After=network-online.target
Wants=network-online.target

[Service]
Type=notify
NotifyAccess=main
ExecStart={exec_start}
ExecReload=/bin/kill -HUP $MAINPID
Restart=on-failure
RestartSec=5s
TimeoutStartSec=90s
TimeoutStopSec=30s
Environment=PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1
UMask=0077

# Root, but with only the network capabilities serve uses.
CapabilityBoundingSet={capabilities}
AmbientCapabilities={capabilities}
NoNewPrivileges=yes

# The file system: read-only but for the state folder(s); no home folders, own /tmp.
ProtectSystem=strict
ReadWritePaths={read_write_paths}
ProtectHome={protect_home}
PrivateTmp=yes
PrivateDevices=yes
ProtectKernelTunables=yes
ProtectKernelModules=yes
ProtectKernelLogs=yes
ProtectControlGroups=yes
ProtectClock=yes
ProtectHostname=yes
RestrictNamespaces=yes
RestrictRealtime=yes
RestrictSUIDSGID=yes
LockPersonality=yes
RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6 AF_NETLINK
SystemCallArchitectures=native
SystemCallFilter=@system-service
SystemCallErrorNumber=EPERM

[Install]
WantedBy=multi-user.target
"""


@dataclass(frozen=True)
class UnitSpec:
    """What varies from one install to the next: the command, and where it may write."""

    python: Path  # the interpreter that has provisioner installed (sys.executable)
    config: Path
    writable: tuple[Path, ...]  # the state folder, and a TFTP root outside it
    readable: tuple[Path, ...] = ()  # code and config: under /home, ProtectHome=read-only


def quote(word: str) -> str:
    """One word for a unit file: systemd's double-quoted C-style string, with ``%``
    (specifiers) and ``$`` (environment) escaped. Control characters are refused."""
    if any(ord(c) < 0x20 or c == "\x7f" for c in word):
        raise ServiceError(f"{word!r}: a control character cannot go into a unit file")
    if word and _PLAIN.fullmatch(word):
        return word
    escaped = word.replace("\\", "\\\\").replace('"', '\\"')
    return '"' + escaped.replace("%", "%%").replace("$", "$$") + '"'


def quote_path(path: Path) -> str:
    """A path for a path-list setting (ReadWritePaths=): no ``$`` expansion there."""
    if not path.is_absolute():
        raise ServiceError(f"{path}: a unit needs absolute paths")
    if any(ord(c) < 0x20 or c == "\x7f" for c in str(path)):
        raise ServiceError(f"{str(path)!r}: a control character cannot go into a unit file")
    escaped = str(path).replace("\\", "\\\\").replace('"', '\\"').replace("%", "%%")
    return f'"{escaped}"'


def exec_start(spec: UnitSpec) -> str:
    argv = [str(spec.python), "-m", "provisioner.cli", "--config", str(spec.config), "serve"]
    return " ".join(quote(word) for word in argv)


def protect_home(paths: Iterable[Path]) -> str:
    """``yes`` (home folders hidden) unless one of ``paths`` lives in one: ``read-only``
    (ReadWritePaths= below still opens a state folder there for writing)."""
    for path in paths:
        pure = PurePosixPath(path)
        if any(pure == home or home in pure.parents for home in HOME_DIRS):
            return "read-only"
    return "yes"


def render_unit(spec: UnitSpec) -> str:
    if not spec.writable:
        raise ServiceError("a unit needs at least the state folder in ReadWritePaths=")
    everything = (spec.python, spec.config, *spec.writable, *spec.readable)
    return UNIT_TEMPLATE.format(
        unit_name=UNIT_NAME,
        exec_start=exec_start(spec),
        capabilities=" ".join(CAPABILITIES),
        read_write_paths=" ".join(quote_path(p) for p in spec.writable),
        protect_home=protect_home(everything),
    )


def _inside(path: Path, folder: Path) -> bool:
    return path == folder or folder in path.parents


def unit_spec(cfg: Config, config_path: Path, python: Path | None = None) -> UnitSpec:
    """The unit for ``cfg`` (read from ``config_path``), run by ``python`` (default: the
    interpreter running now, whose environment has provisioner installed)."""
    state = cfg.state_dir.absolute()
    writable = [state]
    tftp = cfg.tftp_root.absolute()
    if not _inside(tftp, state):
        writable.append(tftp)
    interpreter = Path(python or sys.executable).absolute()
    # What the service reads besides: this code, the venv, and the interpreter the venv's
    # link leads to (pyenv's is under /root: ProtectHome=yes would hide it).
    package = Path(__file__).resolve().parent
    readable = (package, Path(sys.prefix), Path(sys.base_prefix), interpreter.resolve())
    return UnitSpec(
        python=interpreter,
        config=config_path.absolute(),
        writable=tuple(writable),
        readable=readable,
    )


# ------------------------------------------------------------------ I/O: installing


@dataclass(frozen=True)
class Installed:
    path: Path
    reloaded: bool  # False: systemd is not running here (an image being built, a chroot)


def install_unit(text: str, unit_dir: Path, writable: Iterable[Path]) -> Installed:
    """Write the unit (0644, atomically), make the writable folders (0700: ReadWritePaths=
    fails a start on a missing one) and ``systemctl daemon-reload`` where systemd runs."""
    path = unit_dir / UNIT_NAME
    try:
        for folder in writable:
            folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        unit_dir.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{UNIT_NAME}.new")
        tmp.write_text(text)
        tmp.chmod(0o644)
        tmp.replace(path)
    except OSError as exc:
        raise ServiceError(f"cannot write {path}: {exc}") from exc
    if not SYSTEMD_BOOTED.is_dir():
        return Installed(path, reloaded=False)
    daemon_reload()
    return Installed(path, reloaded=True)


def daemon_reload() -> None:
    argv = ["systemctl", "daemon-reload"]
    try:
        subprocess.run(argv, capture_output=True, text=True, check=True, timeout=60)
    except FileNotFoundError as exc:
        raise ServiceError("systemctl is missing: is this a systemd system?") from exc
    except subprocess.CalledProcessError as exc:
        raise ServiceError(
            f"systemctl daemon-reload failed ({exc.returncode}): {exc.stderr.strip()}"
        ) from exc
    except subprocess.TimeoutExpired as exc:
        raise ServiceError("systemctl daemon-reload did not finish in 60 s") from exc
