"""`provisioner inventory parse` as a user runs it (a real process, files and stdin)."""

from __future__ import annotations

import json
import subprocess
import sys

from tests.shared_fixtures import HW, needs_hw

COMBO = HW / "rtx3050-ga106-2507-coral-tpu-desktop__lspci-nnk__asokolsky-exi.txt"


def cli(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "provisioner.cli", *args],
        input=stdin,
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )


@needs_hw
def test_parse_files_and_stdin_as_json() -> None:
    done = cli("inventory", "parse", str(COMBO), "-", "--json", stdin=COMBO.read_text())
    assert done.returncode == 0, done.stderr
    results = json.loads(done.stdout)
    assert [r["file"] for r in results] == [str(COMBO), "-"]
    for r in results:
        assert r["format"] == "lspci-nnk"
        assert {(a["slug"], a["vendor"], a["device"], a["count"]) for a in r["accelerators"]} == {
            ("nvidia-rtx-3050", "10de", "2507", 1),
            ("google-coral-edge-tpu", "1ac1", "089a", 1),
        }


def test_unknown_format_says_what_is_known() -> None:
    done = cli("inventory", "parse", "-", stdin="hello world\n")
    assert done.returncode == 1
    assert "unknown format" in done.stdout and "lspci-nn" in done.stdout
