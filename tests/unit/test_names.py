"""The name patterns (provisioner.names): what each accepts and refuses, and that the JSON
Schema form of a pattern reads as Python's does (no final newline slips through)."""

from __future__ import annotations

import re
from collections.abc import Callable

import jsonschema
import pytest

from provisioner import names

HOSTILE = [
    "", "a\nExecStartPre=/bin/sh", "a;touch /tmp/h", "$(touch /tmp/h)", "`id`", "a b",
    "a%n", "a'b", 'a"b', "{a}", "a/b", "../a", "a\\", "x\n", "-rf", "a\x00b", "a\tb",
]  # fmt: skip

GOOD: dict[str, list[str]] = {
    "interface": ["eth0", "enp0s31f6", "wlp10s0", "ib0", "eth0.100", "br-lan", "a" * 15],
    "hostname": ["node0", "ctr1", "labnode1", "104-171-203-106", "n0.lab.example", "a"],
    "cluster": ["v100s", "rtx", "a", "c" * 31, "llama-2"],
    "model": ["smollm2", "Qwen2.5-0.5B-Instruct", "SmolLM2-135M-Instruct.Q4_1", "m_1"],
    "served": ["qwen", "reasoning", "embed", "bge-base"],
    "unit": ["vllm-rtx-qwen.service", "ray-rtx.service", "llama-rpc.service"],
    "kernel argument": [
        "console=ttyS0,115200n8",
        "provisioner.after=reboot",
        "3",
        "quiet",
        "intel_iommu=on",
        "root=live:http://10.0.0.1/r.squashfs",
    ],
}
BAD: dict[str, list[str]] = {
    "interface": ["a" * 16, "eth0:1", "eth 0", "eth0/1", "eth0@if3", ".", "-x"],
    "hostname": ["Node0", "-node", "node-", "node_0", "a..b", "a" * 64, "(none)", "n.-x"],
    "cluster": ["Rtx", "-rtx", "a" * 32, "r.t"],
    "model": [".hidden", "a" * 129, "a@b"],
    "served": [".hidden", "x@1"],
    "unit": ["x.service/..", "x", "x@.service", ".service", "a b.service"],
    "kernel argument": ["a=${x}", "a b", "a||b", "#x", "-x", 'a="b c"'],
}
CHECKS: dict[str, Callable[[object], str]] = {
    "interface": names.check_interface,
    "hostname": names.check_hostname,
    "cluster": names.check_cluster,
    "model": names.check_model,
    "served": names.check_served,
    "unit": names.check_unit,
    "kernel argument": names.check_kernel_arg,
}


@pytest.mark.parametrize(
    ("kind", "value"), [(k, v) for k, vs in GOOD.items() for v in vs], ids=repr
)
def test_good_names_pass(kind: str, value: str) -> None:
    assert CHECKS[kind](value) == value


@pytest.mark.parametrize(
    ("kind", "value"),
    [(k, v) for k, vs in BAD.items() for v in vs]
    + [(k, h) for k in CHECKS for h in HOSTILE if (k, h) != ("kernel argument", "a/b")],
    ids=repr,
)
def test_bad_and_hostile_names_are_refused_with_kind_value_and_rule(kind: str, value: str) -> None:
    with pytest.raises(names.UnsafeValue) as info:
        CHECKS[kind](value)
    message = str(info.value)
    assert message.startswith(f"{kind} {value!r}: ") and names.RULES[kind] in message


def test_a_hostname_is_at_most_253_characters() -> None:
    long = ".".join(["a" * 63] * 4)  # 255
    assert not names.is_hostname(long) and names.is_hostname(long[:253].rstrip("."))


@pytest.mark.parametrize(
    ("key", "value"), [("ctx_size", "4096"), ("memory_max", "90%"), ("artifact", "vllm-0.3"),
                       ("enforce_eager", ""), ("dtype", "bfloat16"), ("ngl", "-1")],
)  # fmt: skip
def test_options_pass(key: str, value: str) -> None:
    assert names.check_option(key, value) == (key, value)


@pytest.mark.parametrize(
    ("key", "value"),
    [("ctx_size", h) for h in HOSTILE if h and h != "a%n"]  # '%': memory_max=90%
    + [("ctx_size", "--trust-remote-code"), ("Bad-Key", "1"), ("a;b", "1"), ("", "1")],
    ids=repr,
)
def test_hostile_options_are_refused(key: str, value: str) -> None:
    with pytest.raises(names.UnsafeValue, match="option"):
        names.check_option(key, value)


@pytest.mark.parametrize(
    ("pattern", "value"),
    [(p, v) for p in (names.INTERFACE, names.HOSTNAME, names.REPORTED_HOSTNAME)
     for v in ("eth0", "node0", "(none)", "eth0\n", "node0\n", "x y", "(none)\n", "")],
    ids=repr,
)  # fmt: skip
def test_json_patterns_read_like_python_fullmatch(pattern: str, value: str) -> None:
    schema = {"type": "string", "pattern": names.json_pattern(pattern)}
    valid = jsonschema.Draft202012Validator(schema).is_valid(value)
    assert valid == (re.fullmatch(pattern, value) is not None)


@pytest.mark.parametrize("value", ["a\nb", "a\rb", "a\x1bb", "a\x7f", "tab\there", None, True])
def test_check_line_refuses_what_would_leave_its_line(value: object) -> None:
    with pytest.raises(names.UnsafeValue, match="where"):
        names.check_line(value, "where")


def test_check_line_takes_text_and_numbers() -> None:
    assert [names.check_line(v, "x") for v in ("a b;$`%", 3, 0.5)] == ["a b;$`%", "3", "0.5"]


def test_shipped_kernel_arguments_pass() -> None:
    """What the profiles and the config ship today fits, so that wiring the check into
    profile loading and the config refuses nothing that works."""
    from provisioner.config import DEFAULT_HWPROFILES, DEFAULT_KERNEL_ARGS
    from provisioner.profiles import load_profiles

    args = DEFAULT_KERNEL_ARGS.split()
    for profile in load_profiles(DEFAULT_HWPROFILES):
        args += [word for arg in profile.kernel_args for word in arg.split()]
    assert [a for a in args if not re.fullmatch(names.KERNEL_ARG, a)] == []
