"""provisioner/service.py: sd_notify over a real datagram socket, journald logs, the unit."""

from __future__ import annotations

import logging
import os
import shutil
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from provisioner import service
from provisioner.cli.app import main
from provisioner.config import parse_config
from provisioner.service import (
    JournalFormatter,
    Notifier,
    ServiceError,
    UnitSpec,
    install_unit,
    journal_stream,
    protect_home,
    quote,
    render_unit,
    unit_spec,
    use_journal_format,
)

PYTHON = Path("/opt/provisioner/venv/bin/python")


@pytest.fixture
def notify_socket(tmp_path: Path) -> Iterator[socket.socket]:
    """What systemd listens on: an AF_UNIX datagram socket (here in tmp_path)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(str(tmp_path / "notify"))
        sock.settimeout(5)
        yield sock


def received(sock: socket.socket) -> list[str]:
    return sock.recv(4096).decode().split("\n")


# ------------------------------------------------------------------ sd_notify


def test_ready_reaches_the_notify_socket(notify_socket: socket.socket) -> None:
    notifier = Notifier.from_environ({"NOTIFY_SOCKET": notify_socket.getsockname()})
    assert notifier.enabled
    assert notifier.ready("serving: proxy mode on eth0")
    assert received(notify_socket) == ["READY=1", "STATUS=serving: proxy mode on eth0"]


def test_reload_and_stop_notices(notify_socket: socket.socket) -> None:
    notifier = Notifier(notify_socket.getsockname())
    notifier.reloading()
    first, usec, status = received(notify_socket)
    assert first == "RELOADING=1" and status == "STATUS=reloading profiles"
    assert usec.startswith("MONOTONIC_USEC=") and int(usec.split("=")[1]) > 0
    notifier.stopping()
    assert received(notify_socket) == ["STOPPING=1", "STATUS=stopping"]
    notifier.status("line one\nline two")  # one datagram, one STATUS= line
    assert received(notify_socket) == ["STATUS=line one line two"]


def test_abstract_notify_socket() -> None:
    name = f"provisioner-test-{os.getpid()}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind("\0" + name)
        sock.settimeout(5)
        assert Notifier("@" + name).ready("up")
        assert received(sock) == ["READY=1", "STATUS=up"]


def test_without_systemd_nothing_is_sent_and_a_dead_socket_is_only_logged(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    assert not Notifier.from_environ({}).enabled
    assert Notifier(None).ready("x") is False
    with caplog.at_level(logging.WARNING, logger="provisioner.service"):
        assert Notifier(str(tmp_path / "gone")).ready("x") is False
    assert "sd_notify" in caplog.text


def test_the_socket_is_taken_out_of_the_environment(
    monkeypatch: pytest.MonkeyPatch, notify_socket: socket.socket
) -> None:
    """Commands serve runs (ssh, ipmitool) must not notify systemd in its name."""
    monkeypatch.setenv("NOTIFY_SOCKET", notify_socket.getsockname())
    notifier = Notifier.from_environ()
    assert notifier.address == notify_socket.getsockname()
    assert "NOTIFY_SOCKET" not in os.environ


# ------------------------------------------------------------------ journald


def test_journal_stream_is_stderr_only_when_device_and_inode_match(tmp_path: Path) -> None:
    with open(tmp_path / "stream", "w") as stream:
        st = os.fstat(stream.fileno())
        env = {"JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino}"}
        assert journal_stream(env, stream.fileno())
        assert not journal_stream({"JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino + 1}"}, 2)
        assert not journal_stream({"JOURNAL_STREAM": "garbage"}, stream.fileno())
        assert not journal_stream({}, stream.fileno())


@pytest.mark.parametrize(
    ("level", "prefix"),
    [(logging.DEBUG, "<7>"), (logging.INFO, "<6>"), (logging.WARNING, "<4>"),
     (logging.ERROR, "<3>"), (logging.CRITICAL, "<2>")],
)  # fmt: skip
def test_journal_lines_carry_a_priority_and_no_timestamp(level: int, prefix: str) -> None:
    record = logging.LogRecord("provisioner.serve", level, __file__, 1, "a\nb", None, None)
    assert JournalFormatter().format(record) == f"{prefix}provisioner.serve: a\n{prefix}b"


def test_use_journal_format_switches_the_stream_handlers(tmp_path: Path) -> None:
    root = logging.Logger("test-root")
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s %(message)s"))
    root.addHandler(handler)
    assert not use_journal_format({}, root)
    st = os.fstat(2)
    assert use_journal_format({"JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino}"}, root)
    assert isinstance(handler.formatter, JournalFormatter)


# ------------------------------------------------------------------ the unit


def spec(**overrides: object) -> UnitSpec:
    values: dict[str, object] = {
        "python": PYTHON,
        "config": Path("/etc/provisioner/provisioner.toml"),
        "writable": (Path("/var/lib/provisioner"),),
    }
    values.update(overrides)
    return UnitSpec(**values)  # type: ignore[arg-type]


def settings(text: str) -> dict[str, str]:
    found: dict[str, str] = {}
    for line in text.splitlines():
        if "=" in line and not line.startswith("#"):
            key, _, value = line.partition("=")
            assert key not in found, f"{key} twice"
            found[key] = value
    return found


def test_the_unit_is_a_notify_service_with_the_network_capabilities_only() -> None:
    unit = settings(render_unit(spec()))
    assert unit["Type"] == "notify"
    assert unit["NotifyAccess"] == "main"
    assert unit["ExecStart"] == (
        f"{PYTHON} -m provisioner.cli --config /etc/provisioner/provisioner.toml serve"
    )
    assert unit["ExecReload"] == "/bin/kill -HUP $MAINPID"
    caps = "CAP_NET_BIND_SERVICE CAP_NET_RAW CAP_NET_ADMIN"
    assert unit["CapabilityBoundingSet"] == unit["AmbientCapabilities"] == caps
    assert unit["ProtectSystem"] == "strict"
    assert unit["ReadWritePaths"] == '"/var/lib/provisioner"'
    assert unit["ProtectHome"] == "yes"
    assert unit["PrivateTmp"] == unit["NoNewPrivileges"] == "yes"
    assert unit["WantedBy"] == "multi-user.target"


def test_hostile_paths_are_quoted_for_systemd() -> None:
    """%-specifiers, $-variables, quotes, backslashes and spaces reach serve verbatim."""
    config = Path('/etc/prov %n "$HOME"\\x.toml')
    state = Path("/srv/state %i $USER")
    unit = settings(render_unit(spec(config=config, writable=(state,))))
    assert unit["ExecStart"] == (
        f'{PYTHON} -m provisioner.cli --config "/etc/prov %%n \\"$$HOME\\"\\\\x.toml" serve'
    )
    assert unit["ReadWritePaths"] == '"/srv/state %%i $USER"'  # no $ expansion there
    assert quote("plain/word-1.toml") == "plain/word-1.toml"
    for bad in ("/etc/a\nExecStartPre=/bin/sh", "/etc/a\x00b"):
        with pytest.raises(ServiceError, match="control character"):
            render_unit(spec(config=Path(bad)))
    with pytest.raises(ServiceError, match="absolute"):
        render_unit(spec(writable=(Path("state"),)))


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="no systemd-analyze")
def test_systemd_analyze_verifies_the_unit(tmp_path: Path) -> None:
    python = Path(shutil.which("python3") or "/usr/bin/python3")
    text = render_unit(spec(python=python, config=Path("/etc/a b%n$x.toml")))
    path = tmp_path / "provisioner.service"
    path.write_text(text)
    done = subprocess.run(
        ["systemd-analyze", "verify", str(path)], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert "provisioner.service" not in done.stderr, done.stderr  # no warning about it


@pytest.mark.parametrize(
    ("paths", "expected"),
    [
        (["/opt/p/venv/bin/python", "/var/lib/provisioner"], "yes"),
        (["/home/ada/p/.venv/bin/python", "/var/lib/provisioner"], "read-only"),
        (["/usr/bin/python3", "/root/state"], "read-only"),
        (["/homework/p"], "yes"),
    ],
)
def test_home_folders_are_hidden_unless_the_service_lives_there(
    paths: list[str], expected: str
) -> None:
    assert protect_home(Path(p) for p in paths) == expected


CONFIG = """
[network]
interface = "eth0"
address = "10.9.0.1/24"
mode = "proxy"
[paths]
state_dir = "{state}"
"""


def test_a_tftp_root_outside_the_state_folder_is_writable_too(tmp_path: Path) -> None:
    state = tmp_path / "state"
    inside = unit_spec(parse_config(CONFIG.format(state=state)), tmp_path / "p.toml")
    assert inside.writable == (state,)
    outside = parse_config(CONFIG.format(state=state) + '[tftp]\nroot = "/srv/tftp"\n')
    assert unit_spec(outside, tmp_path / "p.toml").writable == (state, Path("/srv/tftp"))


def test_install_writes_the_unit_and_makes_the_state_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(service, "SYSTEMD_BOOTED", tmp_path / "no-systemd-here")
    state = tmp_path / "state"
    installed = install_unit("[Unit]\n", tmp_path / "units", [state])
    assert installed.path == tmp_path / "units" / "provisioner.service"
    assert installed.path.read_text() == "[Unit]\n"
    assert installed.path.stat().st_mode & 0o777 == 0o644
    assert state.stat().st_mode & 0o777 == 0o700
    assert not installed.reloaded  # systemd is not PID 1 here: no daemon-reload


def test_cli_dry_run_prints_the_unit_and_writes_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "p.toml"
    config.write_text(CONFIG.format(state=tmp_path / "state"))
    units = tmp_path / "units"
    argv = ["service", "install", "--config", str(config), "--dry-run", "--unit-dir", str(units)]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert f"--config {config} serve" in out and "Type=notify" in out
    assert not units.exists() and not (tmp_path / "state").exists()
    # The top-level --config works too.
    assert main(["--config", str(config), "service", "install", "--dry-run"]) == 0
    assert f"--config {config} serve" in capsys.readouterr().out


def test_cli_install_refuses_a_bad_config(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "p.toml"
    config.write_text('[network]\ninterface = "eth0"\naddress = "10.9.0.1/24"\nmode = "fast"\n')
    assert main(["service", "install", "--config", str(config), "--unit-dir", str(tmp_path)]) == 1
    assert "network.mode" in capsys.readouterr().err
    assert not (tmp_path / "provisioner.service").exists()


def test_an_interpreter_linked_from_a_home_folder_keeps_home_readable(tmp_path: Path) -> None:
    """A venv made from pyenv's Python: its bin/python leads to /root/.pyenv/..."""
    link = tmp_path / "venv-python"
    link.symlink_to("/root/.pyenv/versions/3.11.7/bin/python3.11")
    cfg = parse_config(CONFIG.format(state=Path("/var/lib/provisioner")))
    unit = settings(render_unit(unit_spec(cfg, Path("/etc/p.toml"), python=link)))
    assert unit["ProtectHome"] == "read-only"
    assert unit["ExecStart"].startswith(f"{link} -m provisioner.cli")  # the link, not its target
