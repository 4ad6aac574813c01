"""The scan the end-to-end session ends with (tests/e2e/conftest.py): it finds each kind
of secret outside its file, and nothing in the files that hold them."""

from __future__ import annotations

from pathlib import Path

from tests.secret_scan import leaks, secrets_under

TOKEN = "tok-" + "a" * 40
KEY = (
    "-----BEGIN OPENSSH PRIVATE KEY-----\n"
    + "b3BlbnNzaC1rZXktdjEAAAAA" * 6
    + "\n"
    + ("QyNTUxOTAAAAIDrsHk" * 5)
    + "\n-----END OPENSSH PRIVATE KEY-----\n"
)


def lab(root: Path) -> Path:
    state = root / "lab0" / "state"
    (state / "ssh").mkdir(parents=True)
    (state / "api-token").write_text(TOKEN + "\n")
    (state / "ssh" / "id_ed25519").write_text(KEY)
    (state / "power.toml").write_text('[nodes.n0]\npassword = "bmc-pass-1234"\n')
    (root / "lab0" / "serve.log").write_text("INFO serving\n")
    return state


def test_a_clean_run_has_no_leak(tmp_path: Path) -> None:
    lab(tmp_path)
    assert {s.kind for s in secrets_under(tmp_path)} == {"API token", "SSH key", "BMC password"}
    assert leaks(tmp_path) == []


def test_each_secret_is_found_outside_its_file(tmp_path: Path) -> None:
    state = lab(tmp_path)
    body = "".join(KEY.strip().splitlines()[1:-1])
    key_piece = body[len(body) // 2 : len(body) // 2 + 40]
    (tmp_path / "lab0" / "serve.log").write_text(f"DEBUG Authorization: Bearer {TOKEN}\n")
    (state / "lab.json").write_text(f'{{"password": "bmc-pass-1234", "k": "{key_piece}"}}')
    found = leaks(tmp_path)
    assert len(found) == 3, found
    assert any("API token" in f and f.endswith("serve.log") for f in found)
    assert any("BMC password" in f and f.endswith("lab.json") for f in found)
    assert any("SSH key" in f and f.endswith("lab.json") for f in found)


def test_big_files_and_node_roots_are_not_read(tmp_path: Path) -> None:
    lab(tmp_path)
    (tmp_path / "lab0" / "rootfs").mkdir()
    (tmp_path / "lab0" / "rootfs" / "token-copy").write_text(TOKEN)
    assert leaks(tmp_path) == []
