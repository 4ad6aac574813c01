"""Tidy a pasted dump before parsing: prompt lines, stderr noise, wiki indentation."""

from __future__ import annotations

import re

# "root@fuji:~# dmidecode", "alex@exi > lspci -nnkq", "$ inxi -Fxz", "[root@h ~]# lspci -v"
PROMPT = re.compile(
    r"^\s*(?:\S+@\S+\s*(?::\S*)?(?:\s+\S+)?\s*[#$>%\u2192\u276f\u00bb]|\[[^\]]+\][#$]|[#$>%\u2192\u276f\u00bb])\s*"
    r"(?:sudo\s+)?(?:\S*/)?"
    r"(?:lspci|lshw|dmidecode|cat|nvidia-smi|sycl-ls|rocminfo|clinfo|inxi)\b.*$"
)
DMIDECODE_BANNER = re.compile(r"^\s*# dmidecode [\d.]+$")
NOISE = re.compile(r"^\s*(?:pcilib|lspci|lshw|dmidecode|sudo|bash|sh|zsh):\s.*$")


def prepare(text: str) -> tuple[list[str], list[str]]:
    """Return (lines, notes): prompt and stderr lines dropped, common indentation removed.

    Tabs are kept (lspci uses them for sub-lines); trailing whitespace is removed.
    """
    notes: list[str] = []
    text = text.replace("\r\n", "\n").replace("\r", "\n").lstrip("\ufeff")
    kept: list[str] = []
    for raw in text.split("\n"):
        line = raw.rstrip()
        if PROMPT.match(line) and not DMIDECODE_BANNER.match(line):
            notes.append(f"skipped shell prompt line {line.strip()!r}")
            continue
        if NOISE.match(line):
            notes.append(f"skipped stderr line {line.strip()!r}")
            continue
        kept.append(line)
    return dedent(kept), notes


def dedent(lines: list[str]) -> list[str]:
    """Remove the space indentation every non-blank line shares (wiki code blocks)."""
    widths = [len(line) - len(line.lstrip(" ")) for line in lines if line.strip()]
    cut = min(widths, default=0)
    if cut == 0:
        return lines
    return [line[cut:] if line.strip() else "" for line in lines]


def strip_ansi(text: str) -> str:
    return re.sub(r"\x1b\[[0-9;]*[A-Za-z]", "", text)


def opt(value: str | None) -> str | None:
    """Empty, placeholder and 'N/A' values -> None; else the stripped value."""
    if value is None:
        return None
    value = value.strip()
    if value.lower() in ("", "n/a", "not specified", "none", "unknown", "--", "[n/a]"):
        return None
    return value


PLACEHOLDERS = frozenset(
    {"to be filled by o.e.m.", "default string", "system serial number", "not applicable", "0"}
)


def dmi_value(value: str | None) -> str | None:
    """Like opt(), and firmware placeholders ('To Be Filled By O.E.M.') -> None."""
    value = opt(value)
    if value is None or value.lower() in PLACEHOLDERS or value.lower().startswith("to be filled"):
        return None
    return value


def to_int(value: str | None) -> int | None:
    if value is None:
        return None
    match = re.match(r"\s*(\d+)", value)
    return int(match.group(1)) if match else None


UNITS = {
    "b": 1,
    "kb": 1000,
    "mb": 1000**2,
    "gb": 1000**3,
    "tb": 1000**4,
    "kib": 1024,
    "mib": 1024**2,
    "gib": 1024**3,
    "tib": 1024**4,
}


def size_bytes(value: str | None, binary_si: bool = False) -> int | None:
    """'16GiB' -> 17179869184; '8192 MB' -> 8 GiB when binary_si (dmidecode's MB are MiB)."""
    if not value:
        return None
    match = re.match(r"\s*(\d+(?:[.,]\d+)?)\s*([kmgt]?i?b)\b", value, re.IGNORECASE)
    if not match:
        return None
    unit = match.group(2).lower()
    if binary_si and "i" not in unit and unit != "b":
        unit = unit[0] + "ib"
    return int(float(match.group(1).replace(",", ".")) * UNITS[unit])
