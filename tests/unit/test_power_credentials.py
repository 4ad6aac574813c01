"""BMC passwords: lookup order, the 0600 rule, and never showing a password."""

from __future__ import annotations

from pathlib import Path

import pytest

from provisioner.power import CredentialsError
from provisioner.power.credentials import (
    Secret,
    candidate_files,
    env_name,
    load_store,
    parse_credentials,
)

FILE = """
[default]
password = "fallback"

[nodes.node0]
password = "for-node0"

[bmcs."10.0.0.31"]
password = "for-the-bmc"
"""


def test_env_name() -> None:
    assert env_name("node0") == "PROVISIONER_POWER_PASSWORD_NODE0"
    assert env_name("gpu-box.1") == "PROVISIONER_POWER_PASSWORD_GPU_BOX_1"


def test_lookup_order() -> None:
    store = parse_credentials(FILE)
    env = {"PROVISIONER_POWER_PASSWORD_NODE0": "from-env"}
    assert store.password("node0", "10.0.0.31", env).reveal() == "from-env"
    assert store.password("node0", "10.0.0.31", {}).reveal() == "for-node0"
    assert store.password("node1", "10.0.0.31", {}).reveal() == "for-the-bmc"
    assert store.password("node2", "10.0.0.99", {}).reveal() == "fallback"


def test_no_password_names_the_variable_and_table() -> None:
    store = parse_credentials("[nodes.other]\npassword = 'x'\n")
    with pytest.raises(CredentialsError) as caught:
        store.password("node0", "10.0.0.31", {})
    assert "$PROVISIONER_POWER_PASSWORD_NODE0" in str(caught.value)
    assert "[nodes.node0]" in str(caught.value)


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("[nodes.node0]\npasword = 'typo'\n", r"\[nodes.node0\] needs password"),
        ("nodes = 3\n", r"\[nodes\] must be a table"),
        ("[default]\nuser = 'x'\n", r"\[default\] needs password"),
        ("[bmc.x]\npassword = 'x'\n", "unknown table"),
        ("[nodes.node0\npassword = 'hunter2'\n", "not valid TOML"),
    ],
)
def test_bad_files_say_why_without_the_password(text: str, says: str) -> None:
    with pytest.raises(CredentialsError, match=says) as caught:
        parse_credentials(text)
    assert "hunter2" not in str(caught.value)


def test_secret_never_prints() -> None:
    secret = Secret("hunter2")
    assert "hunter2" not in repr(secret)
    assert "hunter2" not in str(secret)
    assert "hunter2" not in f"{secret} {[secret]} {dict(p=secret)}"
    assert secret.reveal() == "hunter2"
    assert secret == Secret("hunter2")


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o660, 0o601])
def test_file_readable_by_others_is_refused(tmp_path: Path, mode: int) -> None:
    path = tmp_path / "power.toml"
    path.write_text(FILE)
    path.chmod(mode)
    with pytest.raises(CredentialsError, match=f"mode {mode:04o}.*chmod 600"):
        load_store([path])


@pytest.mark.parametrize("mode", [0o600, 0o400])
def test_private_file_is_read(tmp_path: Path, mode: int) -> None:
    path = tmp_path / "power.toml"
    path.write_text(FILE)
    path.chmod(mode)
    store = load_store([tmp_path / "absent.toml", path])
    assert store.source == path
    assert store.password("node0", None, {}).reveal() == "for-node0"


def test_no_file_gives_an_empty_store_unless_required(tmp_path: Path) -> None:
    assert load_store([tmp_path / "absent.toml"]).source is None
    with pytest.raises(CredentialsError, match="no credentials file"):
        load_store([tmp_path / "absent.toml"], required=True)


def test_candidate_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PROVISIONER_POWER_CREDENTIALS", raising=False)
    assert candidate_files(tmp_path / "x.toml", tmp_path) == [tmp_path / "x.toml"]
    assert candidate_files(None, tmp_path) == [
        Path("/etc/provisioner/power.toml"),
        tmp_path / "power.toml",
    ]
    monkeypatch.setenv("PROVISIONER_POWER_CREDENTIALS", str(tmp_path / "env.toml"))
    assert candidate_files(None, tmp_path) == [tmp_path / "env.toml"]
