"""The parallel runner, result lines, `node add` and `power` through the real CLI.

The CLI tests use drivers that need no peer: `manual:` (status: unknown), `wol://`
(status: unsupported) and unknown nodes; the real BMC peers are in tests/integration.
"""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import pytest

from provisioner.cli import main
from provisioner.errors import RegistryError
from provisioner.power import Operation, PowerError, PowerState
from provisioner.power.run import Job, PowerResult, format_result, run_jobs
from provisioner.registry import Registry


def _raise(message: str) -> PowerState | None:
    raise PowerError(message)


def test_run_jobs_in_parallel_with_one_deadline() -> None:
    release = threading.Event()

    def hang() -> PowerState | None:
        release.wait(30)
        return PowerState.ON

    jobs = [
        Job("fast", lambda: PowerState.ON, "ipmi", "10.0.0.1:623"),
        Job("hung", hang, "redfish", "10.0.0.2"),
        Job("bad", lambda: _raise("wrong password"), "ipmi", "10.0.0.3:623"),
        Job("odd", lambda: 1 / 0),
    ]
    began = time.monotonic()
    results = run_jobs(jobs, Operation.STATUS, timeout=0.5, grace=0.2)
    took = time.monotonic() - began
    release.set()
    assert took < 2.0
    assert [r.node for r in results] == ["fast", "hung", "bad", "odd"]
    assert results[0].ok and results[0].state is PowerState.ON
    assert not results[1].ok and results[1].error == "timed out after 0 s"
    assert results[2].error == "wrong password"
    assert results[3].error == "ZeroDivisionError: division by zero"


def test_slow_jobs_overlap() -> None:
    jobs = [Job(f"n{i}", lambda: time.sleep(0.3)) for i in range(8)]
    began = time.monotonic()
    assert all(r.ok for r in run_jobs(jobs, Operation.ON, timeout=5))
    assert time.monotonic() - began < 1.5


@pytest.mark.parametrize(
    ("result", "line"),
    [
        (PowerResult("node0", Operation.STATUS, True, PowerState.ON), "node0: on"),
        (
            PowerResult("node0", Operation.CYCLE, True, None, None, "ipmi", "10.0.0.32:623"),
            "node0: cycle done (ipmi 10.0.0.32:623)",
        ),
        (
            PowerResult("node1", Operation.ON, False, None, "wrong password", "ipmi", "b:623"),
            "node1: on failed: wrong password (ipmi b:623)",
        ),
        (
            PowerResult("node2", Operation.STATUS, False, None, "no node node2 in the registry"),
            "node2: status failed: no node node2 in the registry",
        ),
    ],
)
def test_format_result(result: PowerResult, line: str) -> None:
    assert format_result(result) == line


# ---------------------------------------------------------------- the CLI


@pytest.fixture
def config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    state = tmp_path / "state"
    path = tmp_path / "provisioner.toml"
    path.write_text(
        '[network]\ninterface = "lo"\naddress = "127.0.0.1/8"\nmode = "proxy"\n'
        f'[paths]\nstate_dir = "{state}"\n'
    )
    monkeypatch.setenv("PROVISIONER_POWER_CREDENTIALS", str(tmp_path / "power.toml"))
    return path


def test_node_add_stores_the_url_and_power_reads_it(
    config: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = ["--config", str(config)]
    assert (
        main([*cfg, "node", "add", "node0", "--mac", "AA-BB-CC-DD-EE-01", "--power", "manual:"])
        == 0
    )
    assert "node0 (aa:bb:cc:dd:ee:01): state new, power manual:" in capsys.readouterr().out
    assert main([*cfg, "node", "add", "node1", "--mac", "aa:bb:cc:dd:ee:02", "--power",
                 "wol://aa:bb:cc:dd:ee:02?interface=eth1", "--json"]) == 0  # fmt: skip
    added = json.loads(capsys.readouterr().out)
    assert added["hostname"] == "node1"
    assert added["power"] == "wol://aa:bb:cc:dd:ee:02?interface=eth1"

    assert main([*cfg, "power", "status", "node0", "node1", "nosuch", "--json"]) == 1
    results = {r["node"]: r for r in json.loads(capsys.readouterr().out)}
    assert results["node0"]["ok"] and results["node0"]["state"] == "unknown"
    assert not results["node1"]["ok"]
    assert "cannot read the power state" in results["node1"]["error"]
    assert results["nosuch"]["error"] == "no node nosuch in the registry"

    assert main([*cfg, "power", "status", "node1", "aa:bb:cc:dd:ee:01"]) == 1
    out, err = capsys.readouterr()
    assert out == "aa:bb:cc:dd:ee:01: unknown\n"
    assert err == (
        "node1: status failed: Wake-on-LAN cannot read the power state "
        "(wol aa:bb:cc:dd:ee:02 via eth1)\n"
    )


def test_node_add_warns_about_a_missing_password_and_refuses_one_in_the_url(
    config: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = ["--config", str(config)]
    assert main([*cfg, "node", "add", "n0", "--mac", "aa:bb:cc:dd:ee:01", "--power",
                 "ipmi://admin@10.0.0.32"]) == 0  # fmt: skip
    err = capsys.readouterr().err
    assert "note: no BMC password for n0: set $PROVISIONER_POWER_PASSWORD_N0" in err
    assert main([*cfg, "node", "add", "n0", "--mac", "aa:bb:cc:dd:ee:01", "--power",
                 "ipmi://admin:hunter2@10.0.0.32"]) == 2  # fmt: skip
    out, err = capsys.readouterr()
    assert "password in the URL is refused" in err
    assert "hunter2" not in out + err


def test_power_without_settings_or_with_a_world_readable_file(
    config: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = ["--config", str(config)]
    assert main([*cfg, "node", "add", "n0", "--mac", "aa:bb:cc:dd:ee:01"]) == 0
    capsys.readouterr()
    assert main([*cfg, "power", "on", "n0"]) == 1
    assert "n0: on failed: no power settings: provisioner node add n0 --mac" in (
        capsys.readouterr().err
    )
    creds = tmp_path / "power.toml"
    creds.write_text("[default]\npassword = 'hunter2'\n")
    creds.chmod(0o644)
    assert main([*cfg, "power", "status", "n0"]) == 1
    out, err = capsys.readouterr()
    assert "mode 0644" in err and "chmod 600" in err and "hunter2" not in out + err


def test_registry_power_table(tmp_path: Path) -> None:
    reg = Registry(tmp_path / "r.sqlite3")
    reg.touch_node("aa:bb:cc:dd:ee:01")
    assert reg.power("aa:bb:cc:dd:ee:01") is None
    reg.set_power("aa:bb:cc:dd:ee:01", "ipmi://admin@10.0.0.32")
    assert reg.power("aa:bb:cc:dd:ee:01") == "ipmi://admin@10.0.0.32"
    with pytest.raises(RegistryError, match="password"):
        reg.set_power("aa:bb:cc:dd:ee:01", "ipmi://admin:pw@10.0.0.32")
    with pytest.raises(RegistryError, match="no node"):
        reg.set_power("aa:bb:cc:dd:ee:99", "manual:")
    reg.forget("aa:bb:cc:dd:ee:01")
    assert reg.power("aa:bb:cc:dd:ee:01") is None
    reg.close()
