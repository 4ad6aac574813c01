"""What every command shares: global options before or after it, one exit-status scheme,
``--json`` where the output is data, a configuration that is found or said missing."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest

from provisioner.cli import build_parser, main
from provisioner.cli import common as cli_common
from provisioner.cli.common import EXIT_STATUSES, Exit, exit_status, is_leaf, walk
from provisioner.errors import (
    ConfigError,
    ConfigNotFound,
    IllegalTransition,
    NodeNotFound,
    ProvisionerError,
    UsageError,
)
from provisioner.image.store import ImageInUse, ImageNotFound
from provisioner.models.store import ModelNotFound

# Leaf commands without --json, each with why: their output is not data.
NO_JSON = {
    "serve": "runs until stopped; it logs",
    "gateway serve": "runs until stopped; it logs",
    "inventory schema": "prints a JSON Schema already",
    "profile new": "prints (or writes) the profile's YAML",
    "lab down": "prints progress only",
    "lab exec": "becomes the command it runs",
    "completion": "prints a shell script",
    "ansible inventory": "prints JSON already (Ansible's dynamic inventory protocol)",
}


def leaves() -> dict[str, argparse.ArgumentParser]:
    return {" ".join(path): p for path, p in walk(build_parser()) if path and is_leaf(p)}


def test_every_command_whose_output_is_data_has_json() -> None:
    found = leaves()
    assert set(NO_JSON) <= set(found), "NO_JSON names a command that is gone"
    without = {name for name, p in found.items() if not any(a.dest == "json" for a in p._actions)}
    assert without == set(NO_JSON)
    for name in ("profile validate", "cluster remove", "lab up", "node remove", "config init"):
        assert name not in without


@pytest.mark.parametrize(
    "argv",
    [
        ["--config", "/c", "--log-level", "DEBUG", "node", "list"],
        ["node", "list", "--config", "/c", "--log-level", "debug"],
        ["node", "--config", "/c", "list", "--log-level", "Debug"],
        ["--config", "/other", "node", "list", "--config", "/c", "--log-level", "debug"],
    ],
)
def test_global_options_before_or_after_the_command(argv: list[str]) -> None:
    args = build_parser().parse_args(argv)
    assert (args.config, args.log_level) == ("/c", "debug")


def test_a_later_subparser_does_not_clobber_an_earlier_global(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("PROVISIONER_LOG", "WARNING")
    args = build_parser().parse_args(["--config", "/c", "serve"])
    assert (args.config, args.log_level) == ("/c", "warning")
    args = build_parser().parse_args(["service", "install", "--config", "/d"])
    assert args.config == "/d"


def test_every_command_takes_the_global_options() -> None:
    for name, parser in leaves().items():
        dests = {a.dest for a in parser._actions}
        assert {"config", "log_level"} <= dests, name


def test_a_bad_log_level_is_a_usage_error(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["--log-level", "verbose", "node", "list"]) == Exit.USAGE
    assert "invalid choice: 'verbose'" in capsys.readouterr().err
    monkeypatch.setenv("PROVISIONER_LOG", "verbose")
    assert main(["node", "list"]) == Exit.USAGE
    assert "$PROVISIONER_LOG='verbose'" in capsys.readouterr().err
    assert main(["--version"]) == Exit.OK
    assert main([]) == Exit.USAGE


@pytest.mark.parametrize(
    ("exc", "status"),
    [
        (ProvisionerError("x"), Exit.FAILED),
        (ConfigError("k", 1, "bad"), Exit.FAILED),
        (UsageError("x"), Exit.USAGE),
        (NodeNotFound("x"), Exit.NOT_FOUND),
        (ConfigNotFound("/x", "init"), Exit.NOT_FOUND),
        (ModelNotFound("x"), Exit.NOT_FOUND),
        (ImageNotFound("x"), Exit.NOT_FOUND),
        (IllegalTransition("x"), Exit.REFUSED),
        (ImageInUse("a@1", {"n0": "booted"}), Exit.REFUSED),
    ],
)
def test_exit_status_of_each_kind(exc: ProvisionerError, status: Exit) -> None:
    assert exit_status(exc) is status


def test_every_status_is_explained() -> None:
    assert set(EXIT_STATUSES) == set(Exit)
    assert [int(e) for e in Exit] == [0, 1, 2, 3, 4, 130]


# ---------------------------------------------------------------- the configuration


def test_a_missing_config_says_how_to_write_one(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["node", "list", "--config", str(tmp_path / "none.toml")]) == Exit.NOT_FOUND
    err = capsys.readouterr().err
    assert "no configuration file" in err and "provisioner config init --interface" in err


def test_the_lab_fallback_is_said_on_stderr(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    lab = tmp_path / "lab.toml"
    lab.write_text('[network]\ninterface = "lo"\naddress = "127.0.0.1/8"\nmode = "proxy"\n')
    monkeypatch.delenv("PROVISIONER_CONFIG", raising=False)
    monkeypatch.setattr(cli_common, "DEFAULT_CONFIG_PATH", tmp_path / "absent.toml")
    monkeypatch.setattr(cli_common, "LAB_CONFIG", lab)
    monkeypatch.setattr(cli_common, "_announced", set())
    assert main(["config", "show", "--json"]) == 0
    out, err = capsys.readouterr()
    assert json.loads(out)["source"] == str(lab)
    assert f"using the lab's {lab}" in err
    # config init never writes the lab's file: its default is the system's.
    args = build_parser().parse_args(
        ["config", "init", "--interface", "lo", "--address", "10.0.0.1/24", "--mode", "full"]
    )
    assert cli_common.config_path(args, lab_fallback=False) == tmp_path / "absent.toml"


def test_config_init_checks_the_interface(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "p.toml"
    base = ["config", "init", "--out", str(out), "--address", "10.0.0.1/24", "--mode", "proxy",
            "--state-dir", str(tmp_path / "state")]  # fmt: skip
    assert main([*base, "--interface", "nosuch0"]) == Exit.NOT_FOUND
    assert "no interface nosuch0 on this machine (have: " in capsys.readouterr().err
    assert not out.exists()
    assert main([*base, "--interface", "../x"]) == Exit.USAGE
    capsys.readouterr()
    assert main([*base, "--interface", "nosuch0", "--force-interface", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["config"] == str(out)
    assert main([*base, "--interface", "lo"]) == Exit.REFUSED  # exists
    assert "--force" in capsys.readouterr().err
    assert main([*base, "--interface", "lo", "--force"]) == 0
    assert 'interface = "lo"' in out.read_text()


# ---------------------------------------------------------------- --json where it was missing


def test_profile_validate_and_model_remove_print_json(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: bad\nversion: one\n")
    assert main(["profile", "validate", str(bad), str(tmp_path / "gone"), "--json"]) == 1
    found = json.loads(capsys.readouterr().out)
    assert found["ok"] is False and found["paths"] == [str(bad), str(tmp_path / "gone")]
    assert {"file": str(tmp_path / "gone"), "line": 0, "key": "path",
            "reason": "does not exist"} in found["problems"]  # fmt: skip
    assert any(p["file"] == str(bad) for p in found["problems"])

    gguf = tmp_path / "tiny.gguf"
    gguf.write_bytes(b"GGUF" + (3).to_bytes(4, "little") + b"weights")
    store = ["--store", str(tmp_path / "models")]
    assert main(["model", "add", str(gguf), *store]) == 0
    capsys.readouterr()
    assert main(["model", "remove", "tiny", *store, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["removed"]["name"] == "tiny"
    assert main(["model", "remove", "tiny", *store]) == Exit.NOT_FOUND
