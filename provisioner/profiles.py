"""Hardware profiles: ``hwprofiles/*.yaml`` loaded, validated and indexed.

A profile says which machines it is for (``match``: all-of / any-of rules over PCI ids or
classes with counts, the CPU model, the memory size and DMI fields) and what follows from
a match (driver recipes, inference engine and its defaults, smoke floors, kernel
arguments). ``docs/profiles.md`` describes the format; ``hwprofiles/profile.schema.json``
is its JSON Schema.

Every problem found is a :class:`ProfileProblem` rendered ``file:line: key: reason``. The
YAML is read with the compose (node) API so each problem knows its line. Nothing is
half-loaded: :func:`load_profiles` raises :class:`ProfileError` carrying every problem,
and the caller keeps its last good :class:`ProfileSet`.

``accelerators.yaml`` in the same directory is the accelerator table, not a profile; it is
skipped.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from provisioner.profile_model import (
    GIB,
    NAME_RE,
    NOT_PROFILES,
    SCHEMA,
    TOP_KEYS,
    CpuRule,
    DmiRule,
    Engine,
    EngineDefaults,
    EngineRule,
    Gpu,
    MemoryRule,
    PciId,
    PciRule,
    Profile,
    ProfileError,
    ProfileProblem,
    ProfileSet,
    Rule,
    Smoke,
)
from provisioner.profile_reader import parse_profile

__all__ = [
    "GIB", "NAME_RE", "NOT_PROFILES", "SCHEMA", "TOP_KEYS", "CpuRule", "DmiRule", "Engine",
    "EngineDefaults", "EngineRule", "Gpu", "MemoryRule", "PciId", "PciRule", "Profile",
    "ProfileError", "ProfileProblem", "ProfileSet", "Rule", "Smoke", "load_profiles",
    "parse_profile", "parse_profiles", "profile_files", "validate",
]  # fmt: skip


def profile_files(paths: Iterable[Path]) -> list[Path]:
    """Expand directories to their ``*.yaml``/``*.yml`` profiles (the accelerator table skipped)."""
    found: list[Path] = []
    for path in paths:
        if path.is_dir():
            found.extend(
                p
                for p in sorted(path.iterdir())
                if p.suffix in (".yaml", ".yml") and p.name not in NOT_PROFILES and p.is_file()
            )
        elif path.name not in NOT_PROFILES:
            found.append(path)
    return found


def parse_profiles(paths: Iterable[Path]) -> tuple[list[Profile], list[ProfileProblem]]:
    """Every profile that reads cleanly, and every problem (duplicates across files too)."""
    profiles: list[Profile] = []
    problems: list[ProfileProblem] = []
    for path in profile_files(paths):
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            problems.append(ProfileProblem(str(path), 0, "file", f"cannot read: {exc}"))
            continue
        profile, found = parse_profile(text, str(path))
        problems.extend(found)
        if profile is not None:
            profiles.append(profile)
    first: dict[str, Profile] = {}
    unique: list[Profile] = []
    for profile in profiles:
        if profile.name in first:
            other = first[profile.name]
            problems.append(
                ProfileProblem(
                    profile.file,
                    profile.line,
                    "name",
                    f"duplicate profile name {profile.name!r} (first in {other.file}:{other.line})",
                )
            )
            continue
        first[profile.name] = profile
        unique.append(profile)
    return unique, problems


def validate(paths: Iterable[Path]) -> list[ProfileProblem]:
    """Every problem in these profile files or directories; empty when all are good."""
    return parse_profiles(paths)[1]


def load_profiles(directory: Path) -> ProfileSet:
    """The profiles in ``directory``; raises :class:`ProfileError` with every problem."""
    if not directory.is_dir():
        raise ProfileError([ProfileProblem(str(directory), 0, "directory", "not a directory")])
    profiles, problems = parse_profiles([directory])
    if problems:
        raise ProfileError(problems)
    return ProfileSet(profiles)
