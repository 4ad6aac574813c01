"""`provisioner profile ...` commands, run through a parser built here as cli.py mounts them."""

from __future__ import annotations

import argparse
import io
import json
from pathlib import Path

import pytest

from provisioner.cli.profile import add_profile_commands, default_profiles_dir
from provisioner.profiles import load_profiles

ROOT = Path(__file__).resolve().parents[2]
AGENT = ROOT / "tests" / "fixtures" / "agent"
BAD = ROOT / "tests" / "fixtures" / "profiles" / "bad"

P40_LSPCI = (
    "01:00.0 3D controller [0302]: NVIDIA Corporation GP102GL [Tesla P40] [10de:1b38] (rev a1)\n"
    "\tSubsystem: NVIDIA Corporation Device [10de:11d9]\n"
    "\tKernel driver in use: nvidia\n"
)


def run(*argv: str) -> int:
    parser = argparse.ArgumentParser(prog="provisioner")
    add_profile_commands(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return int(args.func(args))


def test_default_directory_and_env_override(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PROVISIONER_HWPROFILES", raising=False)
    assert default_profiles_dir() == ROOT / "hwprofiles"
    monkeypatch.setenv("PROVISIONER_HWPROFILES", "/elsewhere")
    assert default_profiles_dir() == Path("/elsewhere")


def test_the_profiles_in_force_are_the_configs_like_serve(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from provisioner.cli import main
    from provisioner.config import Mode, render_config

    mine = tmp_path / "profiles"
    mine.mkdir()
    (mine / "only-mine.yaml").write_text(
        (ROOT / "hwprofiles" / "qemu-lab.yaml")
        .read_text()
        .replace("name: qemu-lab", "name: only-mine")
    )
    config = tmp_path / "provisioner.toml"
    text = render_config(interface="eth0", address="10.1.0.1/24", mode=Mode.PROXY,
                         dhcp_range=None, state_dir=tmp_path / "state")  # fmt: skip
    shipped = f'profiles = "{ROOT / "hwprofiles"}"'
    assert shipped in text
    config.write_text(text.replace(shipped, f'profiles = "{mine}"'))
    monkeypatch.delenv("PROVISIONER_HWPROFILES", raising=False)
    assert main(["--config", str(config), "profile", "list", "--json"]) == 0
    assert [p["name"] for p in json.loads(capsys.readouterr().out)] == ["only-mine"]
    assert main(["profile", "list", "--json", "--config", str(config)]) == 0
    assert [p["name"] for p in json.loads(capsys.readouterr().out)] == ["only-mine"]


def test_list(capsys: pytest.CaptureFixture[str]) -> None:
    assert run("profile", "list") == 0
    out = capsys.readouterr().out
    assert "nvidia-v100s" in out and "llama-rpc" in out
    assert run("profile", "list", "--json") == 0
    data = json.loads(capsys.readouterr().out)
    assert {d["name"] for d in data} >= {"qemu-lab", "generic-cpu", "intel-arc-a770"}
    assert all(d["engine"] in ("vllm", "llama-rpc", "none") for d in data)


def test_show(capsys: pytest.CaptureFixture[str]) -> None:
    assert run("profile", "show", "nvidia-v100s") == 0
    out = capsys.readouterr().out
    assert "quantization=Q8_0" in out and "10de:1df6" in out
    assert run("profile", "show", "intel-arc-a770", "--json") == 0
    data = json.loads(capsys.readouterr().out)
    assert data["match"]["all"][0]["pci"]["ids"][0] == "8086:56a0"
    assert data["kernel_args"] == ["i915.force_probe=56a0,56a1,56a2,56a5"]
    assert run("profile", "show", "nope") == 3
    assert "known:" in capsys.readouterr().err


def test_validate_default_is_clean(capsys: pytest.CaptureFixture[str]) -> None:
    assert run("profile", "validate") == 0
    assert capsys.readouterr().out.startswith("ok: ")


def test_validate_prints_every_problem(capsys: pytest.CaptureFixture[str]) -> None:
    assert run("profile", "validate", str(BAD)) == 1
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == len(list(BAD.glob("*.yaml")))
    assert (
        f"{BAD / 'min-over-max.yaml'}:10: match.all[0].pci.min: impossible: min 4 > max 2" in lines
    )
    assert run("profile", "validate", str(BAD / "nothing-here.yaml")) == 1
    assert "does not exist" in capsys.readouterr().err


def test_a_broken_profile_set_refuses_to_match(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "x.yaml").write_text((BAD / "bad-regex.yaml").read_text(), encoding="utf-8")
    assert run("profile", "list", "--profiles", str(tmp_path)) == 1
    assert "x.yaml:8: match.all[0].cpu_model: bad regex" in capsys.readouterr().err


def test_match_json_for_the_lab_vms(capsys: pytest.CaptureFixture[str]) -> None:
    files = sorted(str(p) for p in AGENT.glob("lab-*.txt"))
    assert run("profile", "match", *files, "--json") == 0
    data = json.loads(capsys.readouterr().out)
    assert [d["file"] for d in data] == files
    assert {d["profile"] for d in data} == {"qemu-lab"}
    assert {d["format"] for d in data} == {"agent"}
    first = data[0]
    assert first["accelerators"] == []
    assert first["candidates"][0]["profile"] == "qemu-lab"
    assert first["candidates"][0]["passed"][0]["rule"] == "dmi.system_vendor == 'QEMU'"


def test_match_json_accelerators_from_stdin(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr("sys.stdin", io.StringIO(P40_LSPCI))
    assert run("profile", "match", "-", "--json") == 0
    [data] = json.loads(capsys.readouterr().out)
    assert (data["file"], data["format"], data["profile"]) == ("-", "lspci-nnk", "nvidia-p40")
    [p40] = data["accelerators"]
    assert (p40["vendor"], p40["device"], p40["count"]) == ("10de", "1b38", 1)
    assert p40["name"]


def test_match_explain_names_failed_rules(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    dump = tmp_path / "p40.txt"
    dump.write_text(P40_LSPCI, encoding="utf-8")
    assert run("profile", "match", str(dump), "--explain") == 0
    out = capsys.readouterr().out
    assert f"{dump}: lspci-nnk: profile nvidia-p40" in out
    assert "candidate nvidia-v100s: no match" in out  # --explain lists every profile
    profiles = load_profiles(ROOT / "hwprofiles")
    v100s, qemu, p40 = (profiles.get(n) for n in ("nvidia-v100s", "qemu-lab", "nvidia-p40"))
    assert v100s is not None and qemu is not None and p40 is not None
    line = v100s.all_of[0].line
    assert f"FAIL all-of line {line}: pci [10de:1db4, 10de:1db5, 10de:1db6, 10de:1df6]" in out
    line = qemu.all_of[0].line
    assert f"FAIL all-of line {line}: dmi.system_vendor == 'QEMU'; observed unknown" in out
    line = p40.all_of[0].line
    assert f"pass all-of line {line}: pci [10de:1b38] count >= 1; observed 1 (10de:1b38 x1)" in out
    assert "(no rules: matches anything)" in out


def test_match_reports_a_conflict(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    for name in ("p40-a", "p40-b"):
        (tmp_path / f"{name}.yaml").write_text(
            f"name: {name}\nversion: 1\ndescription: d\nsources: [s]\n"
            "match: {all: [{pci: {ids: ['10de:1b38']}}]}\n",
            encoding="utf-8",
        )
    dump = tmp_path / "p40.txt"
    dump.write_text(P40_LSPCI, encoding="utf-8")
    assert run("profile", "match", str(dump), "--profiles", str(tmp_path)) == 0
    assert "profile none: conflict between p40-a, p40-b (equally specific)" in (
        capsys.readouterr().out
    )
    assert run("profile", "match", str(dump), "--profiles", str(tmp_path), "--json") == 0
    [data] = json.loads(capsys.readouterr().out)
    assert (data["profile"], data["conflict"]) == (None, ["p40-a", "p40-b"])


def test_match_unknown_format_and_missing_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    junk = tmp_path / "junk.txt"
    junk.write_text("hello there\nnothing to see\n", encoding="utf-8")
    assert run("profile", "match", str(junk), str(tmp_path / "missing.txt")) == 1
    captured = capsys.readouterr()
    assert "unknown format: profile none" in captured.out
    assert "known formats:" in captured.out
    assert "missing.txt: cannot read" in captured.err


def test_new_scaffolds_a_profile_that_validates_and_matches(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    dump = tmp_path / "p40.txt"
    dump.write_text(P40_LSPCI, encoding="utf-8")
    assert run("profile", "new", "my-p40", "--from", str(dump)) == 0
    printed = capsys.readouterr().out
    assert 'ids: ["10de:1b38"]' in printed
    out = tmp_path / "profiles" / "my-p40.yaml"
    out.parent.mkdir()
    assert run("profile", "new", "my-p40", "--from", str(dump), "--out", str(out)) == 0
    assert out.read_text(encoding="utf-8") == printed
    assert run("profile", "new", "my-p40", "--from", str(dump), "--out", str(out)) == 4
    capsys.readouterr()
    assert run("profile", "validate", str(out)) == 0
    assert run("profile", "match", str(dump), "--profiles", str(out.parent), "--json") == 0
    [data] = json.loads(capsys.readouterr().out.split("\n", 1)[1])
    assert data["profile"] == "my-p40"


def test_new_keeps_the_revision_where_the_driver_needs_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    dump = tmp_path / "npu.txt"
    dump.write_text(
        "c4:00.1 Signal processing controller [1180]: Advanced Micro Devices, Inc. [AMD] "
        "Device [1022:17f0] (rev 11)\n",
        encoding="utf-8",
    )
    assert run("profile", "new", "strix-halo", "--from", str(dump)) == 0
    assert 'ids: ["1022:17f0 rev 11"]' in capsys.readouterr().out


def test_new_from_a_dump_without_accelerators_uses_dmi(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    dump = tmp_path / "dmi.txt"
    dump.write_text(
        "Handle 0x0001, DMI type 1, 27 bytes\nSystem Information\n\tManufacturer: Dell Inc.\n"
        "\tProduct Name: PowerEdge R640\n",
        encoding="utf-8",
    )
    assert run("profile", "new", "r640", "--from", str(dump)) == 0
    out = capsys.readouterr().out
    assert 'system_product: "PowerEdge R640"' in out
    assert run("profile", "new", "Bad Name", "--from", str(dump)) == 2


def test_returns_the_profile_subparsers_for_more_commands(
    capsys: pytest.CaptureFixture[str],
) -> None:
    parser = argparse.ArgumentParser(prog="provisioner")
    profile_sub = add_profile_commands(parser.add_subparsers(dest="command", required=True))
    extra = profile_sub.add_parser("reload")
    extra.set_defaults(func=lambda args: 7)
    args = parser.parse_args(["profile", "reload"])
    assert args.func(args) == 7


H100_PASTE = next((ROOT / "tests" / "fixtures" / "pastes").glob("h100-sxm5-x8-*.txt"))


def test_match_explain_lists_each_section_its_parser_and_the_names_resolved(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Issue 19: on a mixed paste (lspci, prose, commands, nvidia-smi), --explain says
    which lines each tool printed and which parser read them, what was skipped, and the
    ids each name-only device resolved to."""
    assert run("profile", "match", "--explain", str(H100_PASTE)) == 0
    out = capsys.readouterr().out
    assert f"{H100_PASTE}: lspci-plain+nvidia-smi-table: profile nvidia-hopper" in out
    assert "  section lines 3-14: lspci-plain, 12 PCI devices" in out
    assert "  section lines 82-129: nvidia-smi-table, 8 PCI devices" in out
    assert "  lines 36-47 skipped: not a known tool's output ('sudo dnf update -y')" in out
    assert "name 'GH100 [H100 SXM5 80GB]' -> " in out
    assert "accelerator: nvidia-hopper" in out and "x8" in out
    assert run("profile", "match", "--json", str(H100_PASTE)) == 0
    [data] = json.loads(capsys.readouterr().out)
    assert [(s["format"], s["lines"]) for s in data["sections"]] == [
        ("lspci-plain", [3, 14]),
        ("nvidia-smi-table", [82, 129]),
    ]
    assert data["profile"] == "nvidia-hopper" and data["skipped"]
