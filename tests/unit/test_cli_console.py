"""`node console` through the real CLI: the kept lines, and `--sol` for IPMI nodes.

`--sol` execs ipmitool: no BMC with Serial-over-LAN runs here (ipmi_sim's SOL needs a
serial device), so a stand-in ``ipmitool`` first on PATH records its argv and
environment; the CLI runs as a real process so that its exec really happens."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from provisioner.cli import main
from provisioner.cli.common import Exit
from provisioner.console.protocol import KernelLine
from provisioner.console.store import ConsoleStore, Record
from provisioner.power.ipmi import sol_argv
from provisioner.power.settings import parse_power_url
from provisioner.registry import Registry

MAC = "52:54:00:77:00:01"
SECRET = "s3cret-pa55"


@pytest.fixture
def config(tmp_path: Path) -> Path:
    path = tmp_path / "provisioner.toml"
    path.write_text(
        '[network]\ninterface = "lo"\naddress = "127.0.0.1/8"\nmode = "proxy"\n'
        f'[paths]\nstate_dir = "{tmp_path / "state"}"\n'
    )
    reg = Registry(tmp_path / "state" / "registry.sqlite3")
    reg.touch_node(MAC)
    reg.set_hostname(MAC, "gpu0")
    reg.close()
    return path


def test_the_last_lines_as_text_and_json(config: Path, capsys: pytest.CaptureFixture[str]) -> None:
    state = config.parent / "state"
    assert main(["--config", str(config), "node", "console", "gpu0"]) == Exit.OK
    assert "no console lines kept" in capsys.readouterr().err
    ConsoleStore(state).append(
        MAC,
        [
            Record(1.0, KernelLine("Linux version 6.1.0", 5, 0, 0.0)),
            Record(2.0, KernelLine("Oops: 0002 [#1] SMP", 1, 1, 12.5)),
            Record(3.0, KernelLine("plain, no time")),
        ],
    )
    assert main(["--config", str(config), "node", "console", MAC, "-n", "2"]) == Exit.OK
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "[   12.500000] <alert> Oops: 0002 [#1] SMP"
    assert out[1].endswith(" plain, no time") and out[1][:4].isdigit()  # when it arrived
    assert main(["--config", str(config), "node", "console", "gpu0", "--json"]) == Exit.OK
    doc = json.loads(capsys.readouterr().out)
    assert doc["mac"] == MAC and [r["seq"] for r in doc["lines"]] == [0, 1, None]
    assert main(["--config", str(config), "node", "console", "gpu0", "-n", "-1"]) == Exit.USAGE
    assert main(["--config", str(config), "node", "console", "nobody"]) == Exit.NOT_FOUND


def test_sol_argv_keeps_the_password_off_the_command_line() -> None:
    settings = parse_power_url("ipmi://admin@10.0.0.32:6230?cipher=17")
    assert sol_argv(settings) == [
        "ipmitool", "-I", "lanplus", "-H", "10.0.0.32", "-p", "6230", "-U", "admin", "-E",
        "-C", "17", "sol", "activate",
    ]  # fmt: skip


def sol(config: Path, tmp_path: Path, power: str | None) -> subprocess.CompletedProcess[str]:
    reg = Registry(config.parent / "state" / "registry.sqlite3")
    reg.set_power(MAC, power)
    reg.close()
    fake = tmp_path / "bin" / "ipmitool"
    fake.parent.mkdir(exist_ok=True)
    fake.write_text('#!/bin/sh\necho "argv: $*"\necho "password: $IPMI_PASSWORD"\n')
    fake.chmod(0o755)
    env = {
        **os.environ,
        "PATH": f"{fake.parent}:{os.environ['PATH']}",
        "PROVISIONER_POWER_PASSWORD_GPU0": SECRET,
    }
    return subprocess.run(
        [sys.executable, "-m", "provisioner.cli", "--config", str(config),
         "node", "console", "gpu0", "--sol"],
        capture_output=True, text=True, env=env, timeout=60, check=False,
    )  # fmt: skip


def test_sol_execs_ipmitool_with_the_password_in_its_environment(
    config: Path, tmp_path: Path
) -> None:
    done = sol(config, tmp_path, "ipmi://admin@10.0.0.32")
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [
        "argv: -I lanplus -H 10.0.0.32 -p 623 -U admin -E sol activate",
        f"password: {SECRET}",
    ]
    assert SECRET not in done.stderr and "Serial-over-LAN on 10.0.0.32" in done.stderr


@pytest.mark.parametrize(
    ("power", "why"),
    [
        ("redfish://admin@10.0.0.40", "Serial-over-LAN is IPMI's"),
        (None, "no power settings"),
    ],
)
def test_sol_is_refused_without_an_ipmi_bmc(
    config: Path, tmp_path: Path, power: str | None, why: str
) -> None:
    done = sol(config, tmp_path, power)
    assert done.returncode == Exit.REFUSED and why in done.stderr
    assert "argv:" not in done.stdout


def test_a_removed_node_loses_its_console_lines(
    config: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    state = config.parent / "state"
    ConsoleStore(state).append(MAC, [Record(1.0, KernelLine("Linux version 6.1.0"))])
    assert (state / "console" / f"{MAC}.log").exists()
    assert main(["--config", str(config), "node", "remove", "gpu0", "--yes"]) == Exit.OK
    assert not (state / "console" / f"{MAC}.log").exists()
