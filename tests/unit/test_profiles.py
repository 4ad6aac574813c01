"""hwprofiles/*.yaml load and are cited; every bad-profile case is refused at its line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from provisioner.discovery import pciids
from provisioner.discovery.accelerators import default_table
from provisioner.profiles import (
    Engine,
    PciRule,
    ProfileError,
    load_profiles,
    parse_profile,
    profile_files,
    validate,
)

ROOT = Path(__file__).resolve().parents[2]
HWPROFILES = ROOT / "hwprofiles"
BAD = ROOT / "tests" / "fixtures" / "profiles" / "bad"
DUPLICATE = ROOT / "tests" / "fixtures" / "profiles" / "duplicate"
FAMILIES = {
    "nvidia-pascal-gp100", "nvidia-pascal", "nvidia-volta", "nvidia-turing",
    "nvidia-ampere-ga100", "nvidia-ampere", "nvidia-ada", "nvidia-hopper",
    "nvidia-blackwell-dc", "nvidia-blackwell-ultra", "nvidia-blackwell",
    "intel-arc-alchemist", "intel-arc-battlemage",
}  # fmt: skip
SHIPPED = FAMILIES | {
    "amd-ryzen-ai-npu",
    "generic-cpu",
    "intel-arc-a770",
    "nvidia-p40",
    "nvidia-rtx-ada",
    "nvidia-rtx-ampere",
    "nvidia-rtx-turing",
    "nvidia-v100s",
    "qemu-lab",
}


def test_shipped_profiles_load_and_skip_the_accelerator_table() -> None:
    profiles = load_profiles(HWPROFILES)
    assert set(profiles.names) == SHIPPED
    assert all(p.name != "accelerators" for p in profiles)
    assert HWPROFILES / "accelerators.yaml" not in profile_files([HWPROFILES])
    assert validate([HWPROFILES]) == []
    assert all(name.startswith("nvidia-rtx") for name in profiles.names if "rtx" in name)
    assert {p.name for p in profiles if p.family} == FAMILIES


def test_hard_won_facts_are_in_the_profiles() -> None:
    profiles = load_profiles(HWPROFILES)
    v100s = profiles.get("nvidia-v100s")
    assert v100s is not None
    assert (v100s.engine, v100s.engine_defaults.dtype, v100s.engine_defaults.quantization) == (
        Engine.LLAMA_RPC,
        "float16",
        "Q8_0",
    )
    p40 = profiles.get("nvidia-p40")
    assert p40 is not None and p40.engine is Engine.LLAMA_RPC
    turing = profiles.get("nvidia-rtx-turing")
    assert turing is not None and turing.engine_defaults.dtype == "float16"
    arc = profiles.get("intel-arc-a770")
    assert arc is not None and any("force_probe" in arg for arg in arc.kernel_args)
    generic = profiles.get("generic-cpu")
    assert generic is not None and not generic.all_of and not generic.any_of


def _pci_ids(profile_rules: tuple[object, ...]) -> list[tuple[str, str, str | None]]:
    return [
        (i.vendor, i.device, i.revision)
        for rule in profile_rules
        if isinstance(rule, PciRule) and rule.family is None  # (a family's ids: pci.ids names)
        for i in rule.ids
    ]


def test_every_profile_pci_id_is_known_and_cited() -> None:
    """Each id is in the accelerator table (itself checked against pci.ids and kernel
    tables) or in pci.ids; and the profile's sources name it."""
    table = default_table()
    db = pciids.default()
    for profile in load_profiles(HWPROFILES):
        cited = " ".join(profile.sources).lower()
        for vendor, device, revision in _pci_ids(profile.all_of + profile.any_of):
            entry = table.lookup(vendor, device, revision)
            if entry is None and not db:
                continue  # no pci.ids installed: only the table can vouch here
            known = entry is not None or db.name(vendor, device) is not None
            assert known, f"{profile.name}: {vendor}:{device} is in no table"
            if entry is not None and revision:
                assert entry.revision == revision
            assert device in cited, f"{profile.name}: {vendor}:{device} not cited in sources"


def _expectation(path: Path) -> tuple[int, str]:
    first = path.read_text(encoding="utf-8").splitlines()[0]
    line, key = first.removeprefix("# expect:").split()
    return int(line), key


BAD_FILES = sorted(BAD.glob("*.yaml"))


@pytest.mark.parametrize("path", BAD_FILES, ids=[p.stem for p in BAD_FILES])
def test_bad_profile_is_refused_at_its_line_and_key(path: Path) -> None:
    line, key = _expectation(path)
    problems = validate([path])
    assert [(p.line, p.key) for p in problems] == [(line, key)], [str(p) for p in problems]
    assert str(problems[0]).startswith(f"{path}:{line}: {key}: ")


def test_bad_cases_cover_the_issue() -> None:
    stems = {p.stem for p in BAD_FILES}
    assert {"unknown-key", "bad-regex", "min-over-max", "negative-memory", "empty-any"} <= stems
    assert {"wrong-type", "ids-not-a-list"} <= stems


def test_duplicate_names_across_files() -> None:
    problems = validate([DUPLICATE])
    assert [(Path(p.file).name, p.line, p.key) for p in problems] == [("b.yaml", 2, "name")]
    assert "a.yaml:1" in problems[0].reason


def test_load_refuses_the_whole_set_with_every_problem(tmp_path: Path) -> None:
    for path in BAD_FILES:
        (tmp_path / path.name).write_text(path.read_text(encoding="utf-8"), encoding="utf-8")
    with pytest.raises(ProfileError) as caught:
        load_profiles(tmp_path)
    assert len(caught.value.problems) == len(BAD_FILES)
    assert str(caught.value).count("\n") == len(BAD_FILES) - 1


def test_missing_directory_is_a_problem(tmp_path: Path) -> None:
    with pytest.raises(ProfileError, match="not a directory"):
        load_profiles(tmp_path / "nope")


@pytest.mark.parametrize(
    ("text", "key", "reason"),
    [
        ("", "file", "empty"),
        ("- a\n- b\n", "", "expected a mapping"),
        (
            "name: x\nname: y\nversion: 1\ndescription: d\nsources: [s]\nmatch: {}\n",
            "name",
            "repeated key",
        ),
        (
            "name: Bad_Name\nversion: 1\ndescription: d\nsources: [s]\nmatch: {}\n",
            "name",
            "lowercase",
        ),
        ("name: x\nversion: 0\ndescription: d\nsources: [s]\nmatch: {}\n", "version", ">= 1"),
        ("name: x\nversion: 1\ndescription: d\nsources: []\nmatch: {}\n", "sources", "empty"),
        (
            "name: x\nversion: 1\ndescription: d\nsources: [s]\nmatch: {all: []}\n",
            "match.all",
            "empty all-of",
        ),
        (
            "name: x\nversion: 1\ndescription: d\nsources: [s]\nmatch: {}\n"
            "engine_defaults: {dtype: half}\n",
            "engine_defaults",
            "engine is none",
        ),
        (
            "name: x\nversion: 1\ndescription: d\nsources: [s]\nmatch: {}\nengine: vllm\n"
            "smoke: {min_tokens_per_s: 5}\n",
            "smoke.reference_model",
            "floors need",
        ),
        (
            "name: x\nversion: 1\ndescription: d\nsources: [s]\n"
            "match: {all: [{pci: {class: ['03']}}]}\n",
            "match.all[0].pci.class[0]",
            "4 hex",
        ),
        (
            "name: x\nversion: 1\ndescription: d\nsources: [s]\n"
            "match: {all: [{pci: {ids: ['10de:1b38'], class: ['0302']}}]}\n",
            "match.all[0].pci",
            "exactly one",
        ),
        (
            "name: x\nversion: 1\ndescription: d\nsources: [s]\n"
            "match: {all: [{dmi: {chassis: X}}]}\n",
            "match.all[0].dmi.chassis",
            "unknown key",
        ),
        (
            "name: x\nversion: 1\ndescription: d\nsources: [s]\n"
            "match: {all: [{pci: {ids: ['10de:1b38'], min: -1}}]}\n",
            "match.all[0].pci.min",
            ">= 0",
        ),
    ],
)
def test_more_refusals(text: str, key: str, reason: str) -> None:
    profile, problems = parse_profile(text, "t.yaml")
    assert profile is None
    assert any(p.key == key and reason in p.reason for p in problems), [str(p) for p in problems]


def test_a_good_profile_reads_every_rule_kind() -> None:
    text = (
        "name: full\nversion: 2\ndescription: every rule\nsources: [s]\nmatch:\n  all:\n"
        "    - pci: {ids: ['1022:17f0 rev 11'], min: 1, max: 1}\n"
        "    - pci: {class: ['0302'], min: 0, max: 0}\n"
        "    - cpu_model: 'Ryzen AI Max'\n"
        "    - memory_min_gib: 96\n"
        "    - dmi: {board_vendor: Framework, board_name: {regex: '^FRANMDCP'}}\n"
        "engine: llama-rpc\nengine_defaults: {dtype: float16, quantization: Q8_0}\n"
        "smoke: {reference_model: m.gguf, min_tokens_per_s: 10, max_ttft_s: 2.5}\n"
        "kernel_args: ['amd_iommu=off']\ndrivers: [amdxdna]\n"
    )
    profile, problems = parse_profile(text, "full.yaml")
    assert problems == [] and profile is not None
    assert len(profile.all_of) == 6  # the dmi rule is one rule per field
    assert [r.line for r in profile.all_of] == [7, 8, 9, 10, 11, 11]
    assert profile.smoke.max_ttft_s == 2.5 and profile.engine is Engine.LLAMA_RPC


def test_json_schema_accepts_the_shipped_profiles_and_refuses_bad_ones() -> None:
    jsonschema = pytest.importorskip(
        "jsonschema", reason="jsonschema is not installed (not a dependency)"
    )
    import yaml

    schema = json.loads((HWPROFILES / "profile.schema.json").read_text(encoding="utf-8"))
    jsonschema.Draft202012Validator.check_schema(schema)
    validator = jsonschema.Draft202012Validator(schema)
    for path in profile_files([HWPROFILES]):
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
        errors = list(validator.iter_errors(data))
        assert errors == [], f"{path.name}: {[e.message for e in errors]}"
    for stem in ("unknown-key", "wrong-type", "empty-any", "bad-pci-id", "negative-memory"):
        data = yaml.safe_load((BAD / f"{stem}.yaml").read_text(encoding="utf-8"))
        assert list(validator.iter_errors(data)), stem


def test_json_schema_is_json_with_the_same_top_level_keys() -> None:
    from provisioner.profiles import TOP_KEYS

    schema = json.loads((HWPROFILES / "profile.schema.json").read_text(encoding="utf-8"))
    assert set(schema["properties"]) == set(TOP_KEYS)
    assert schema["additionalProperties"] is False


ENGINES_HEAD = "name: e\nversion: 1\ndescription: d\nsources: [s]\nmatch: {}\nengine: llama-rpc\n"


@pytest.mark.parametrize(
    ("engines", "key", "reason"),
    [
        ("engines:\n  vllm: {refused: too old}\n", "engines.vllm", "refused and use go together"),
        ("engines:\n  vllm: {refused: x, use: llama-rpc}\n", "engines.vllm.use", "must be listed"),
        ("engines:\n  llama-rpc: {refused: x, use: vllm}\n  vllm: {refused: y, use: llama-rpc}\n",
         "engines.llama-rpc.use", "not refused"),
        ("engines:\n  tgi: {}\n", "engines.tgi", "unknown key"),
        ("engines:\n  vllm: {colour: red}\n", "engines.vllm.colour", "unknown key"),
        ("engines:\n  vllm: {refused: x, use: llama-rpc, dtype: half}\n  llama-rpc:\n",
         "engines.vllm", "no settings"),
    ],
)  # fmt: skip
def test_engine_rules_are_checked(engines: str, key: str, reason: str) -> None:
    profile, problems = parse_profile(ENGINES_HEAD + engines, "e.yaml")
    assert profile is None or problems
    assert any(p.key == key and reason in p.reason for p in problems), [str(p) for p in problems]


def test_engine_rules_say_why_and_what_instead() -> None:
    text = ENGINES_HEAD + (
        "engines:\n  llama-rpc: {backend: cuda, gpu_arch: '61'}\n"
        "  vllm: {refused: 'needs 7.5', use: llama-rpc}\n"
    )
    profile, problems = parse_profile(text, "e.yaml")
    assert problems == [] and profile is not None
    assert profile.refuses(Engine.VLLM) == ("needs 7.5", Engine.LLAMA_RPC)
    assert profile.refuses(Engine.LLAMA_RPC) is None
    rule = profile.engine_rule(Engine.LLAMA_RPC)
    assert rule is not None and rule.setting("gpu_arch") == "61"
