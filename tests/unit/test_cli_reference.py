"""docs/cli.md is the parser's (scripts/gen-cli-doc writes it), and `provisioner
completion` writes scripts the shells load."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from provisioner.cli import build_parser, main
from provisioner.cli.common import Exit
from provisioner.cli.reference import render

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "cli.md"


def test_docs_cli_md_is_up_to_date() -> None:
    assert DOC.read_text(encoding="utf-8") == render(build_parser()), (
        "docs/cli.md no longer matches the parser: run scripts/gen-cli-doc"
    )


def test_the_reference_does_not_depend_on_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    before = render(build_parser())
    monkeypatch.setenv("COLUMNS", "40")
    monkeypatch.setenv("PROVISIONER_LOG", "error")
    monkeypatch.setenv("PROVISIONER_CONFIG", "/elsewhere.toml")
    assert render(build_parser()) == before


def test_the_reference_names_every_command_and_status() -> None:
    text = render(build_parser())
    for words in ("node remove", "node rename", "node boot", "completion", "profile validate"):
        assert f"`provisioner {words}`" in text
    assert "provisioner node boot [--json] NODE {local,network}" in text
    assert "| 3 | a node, cluster" in text and "| 4 | refused" in text


@pytest.mark.parametrize("shell", ["bash", "zsh"])
def test_completion_scripts(shell: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["completion", shell]) == Exit.OK
    script = capsys.readouterr().out
    assert "provisioner" in script and "rename" in script and "--log-level" in script
    binary = shutil.which(shell)
    if binary is None:
        return  # the text is checked; the shell that would load it is not installed
    done = subprocess.run(
        [binary, "-n"], input=script, capture_output=True, text=True, check=False, timeout=30
    )
    assert done.returncode == 0, done.stderr
