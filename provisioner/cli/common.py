"""What the command modules share: exit statuses, the configuration and registry in
force, JSON, tables, timelines, progress lines.

Exit statuses, one scheme for every command (``docs/cli.md`` lists it, from
:data:`EXIT_STATUSES`):

====  ==========  ============================================================
0     ok          it did what was asked
1     failed      it ran and something failed: a node, a step, a check, a file
2     usage       the command line is wrong (argparse's own status)
3     not found   a node, cluster, image, model, profile or file named is not there
4     refused     refused as things stand: it would clash with what exists (a name,
                  a MAC, a file, an image in use) or the state table forbids it;
                  nothing was changed
130   interrupted Ctrl-C
====  ==========  ============================================================

A command returns its status, or raises: :func:`exit_status` maps the exception to one
(:class:`UsageError`, :class:`NotFound` and :class:`Refused` of :mod:`provisioner.errors`,
or a class :data:`NOT_FOUND` or :data:`REFUSED` names; any other error is 1).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from enum import IntEnum
from pathlib import Path
from typing import Any

from provisioner.artifacts import ArtifactNotFound
from provisioner.clusters import store as cluster_store
from provisioner.config import DEFAULT_CONFIG_PATH, DEFAULT_STATE_DIR, Config, load_config
from provisioner.errors import (
    ConfigError,
    ConfigNotFound,
    NotFound,
    ProvisionerError,
    Refused,
    UsageError,
)
from provisioner.image.store import ImageInUse, ImageNotFound
from provisioner.lab.lab import DEFAULT_LAB_DIR
from provisioner.models.store import ModelNotFound
from provisioner.records import Cluster, Event
from provisioner.registry import Registry


class Exit(IntEnum):
    OK = 0
    FAILED = 1
    USAGE = 2
    NOT_FOUND = 3
    REFUSED = 4
    INTERRUPTED = 130


EXIT_STATUSES: dict[Exit, str] = {
    Exit.OK: "it did what was asked",
    Exit.FAILED: "it ran and something failed: a node, a step, a check, a file, the "
    "configuration (the message says what)",
    Exit.USAGE: "the command line is wrong: an unknown option, a missing or malformed "
    "argument (argparse's own status)",
    Exit.NOT_FOUND: "a node, cluster, image, model, artifact, profile or configuration "
    "file named is not there",
    Exit.REFUSED: "refused as things stand, nothing changed: it would clash with what "
    "exists (a hostname, a MAC under another name, a file, an image in use, a cluster's "
    "member) or the node state table forbids the move",
    Exit.INTERRUPTED: "interrupted (Ctrl-C)",
}

# Errors of another module that are of a kind but do not derive from its marker (yet).
NOT_FOUND: tuple[type[ProvisionerError], ...] = (ModelNotFound, ImageNotFound, ArtifactNotFound)
REFUSED: tuple[type[ProvisionerError], ...] = (ImageInUse,)


def exit_status(exc: ProvisionerError) -> Exit:
    """The exit status of a command that raised ``exc``."""
    if isinstance(exc, UsageError):
        return Exit.USAGE
    if isinstance(exc, (NotFound, *NOT_FOUND)):
        return Exit.NOT_FOUND
    if isinstance(exc, (Refused, *REFUSED)):
        return Exit.REFUSED
    return Exit.FAILED


def print_json(data: object) -> None:
    json.dump(data, sys.stdout, indent=2, default=str)
    sys.stdout.write("\n")


def print_timeline(events: list[Event]) -> None:
    if not events:
        print("  (nothing yet)")
        return
    first = prev = events[0].ts
    for e in events:
        detail = " ".join(f"{k}={v}" for k, v in e.detail.items() if v is not None)
        print(f"  t={e.ts - first:8.3f}  +{e.ts - prev:7.3f}  {e.kind.value:11} {detail}")
        prev = e.ts


def table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    for row in [header, *rows]:
        print("  ".join(str(c).ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())


def stamped(what: str) -> None:
    """A progress line on stderr, with the time: long work shows what it is doing."""
    print(f"[{time.strftime('%H:%M:%S')}] {what}", file=sys.stderr, flush=True)


LAB_CONFIG = DEFAULT_LAB_DIR / "provisioner.toml"
INIT_HINT = (
    "write one with `provisioner config init --interface IF --address ADDR/PREFIX "
    "--mode full|proxy` (or give --config FILE, or set $PROVISIONER_CONFIG)"
)
_announced: set[Path] = set()  # the lab fallback is said once per run, not per load


def config_path(args: argparse.Namespace, *, lab_fallback: bool = True) -> Path:
    """--config, else $PROVISIONER_CONFIG, else the system's; where none of those exists
    and ``lab_fallback``, a running lab's (said on stderr: never silently)."""
    if getattr(args, "config", None):
        return Path(args.config)
    if os.environ.get("PROVISIONER_CONFIG"):
        return Path(os.environ["PROVISIONER_CONFIG"])
    if lab_fallback and not DEFAULT_CONFIG_PATH.exists() and LAB_CONFIG.exists():
        if LAB_CONFIG not in _announced:
            _announced.add(LAB_CONFIG)
            print(
                f"provisioner: no {DEFAULT_CONFIG_PATH}: using the lab's {LAB_CONFIG} "
                "(give --config FILE to choose)",
                file=sys.stderr,
            )
        return LAB_CONFIG
    return DEFAULT_CONFIG_PATH


def load_cfg(args: argparse.Namespace) -> Config:
    """The configuration the command line points at (see ``config_path``); a missing file
    is :class:`ConfigNotFound`, saying how to write one."""
    path = config_path(args)
    if not path.exists():
        raise ConfigNotFound(path, INIT_HINT)
    return load_config(path)


def open_registry(cfg: Config, *, readonly: bool = False) -> Registry:
    """The registry of ``cfg``; ``readonly``: for commands that only read (never writes,
    not even an upgrade: an old file is refused with what to run)."""
    return Registry(cfg.registry_location, readonly=readonly)


def load_cluster(registry: Registry, name: str) -> Cluster:
    """The cluster ``name``; one that is not there is :class:`NotFound`."""
    if registry.cluster_spec(name) is None:
        have = ", ".join(registry.cluster_names()) or "none yet: provisioner cluster create"
        raise NotFound(f"no cluster {name!r} (have: {have})")
    return cluster_store.load(registry, name)


def state_store(args: argparse.Namespace, folder: str, env: str) -> Path:
    """A store folder: ``--store``, else ``$env``, else ``<state_dir>/<folder>`` of the
    configuration in force (the one `serve` serves from), else the default state dir's."""
    if getattr(args, "store", None):
        return Path(args.store)
    if os.environ.get(env):
        return Path(os.environ[env])

    try:
        return load_cfg(args).state_dir / folder
    except (ConfigError, OSError):
        return DEFAULT_STATE_DIR / folder


def walk(
    parser: argparse.ArgumentParser, path: tuple[str, ...] = ()
) -> Iterator[tuple[tuple[str, ...], argparse.ArgumentParser]]:
    """Every parser under ``parser`` (itself first) with its command path, in the order
    they were added: ``((), top)``, ``(("node",), node)``, ``(("node", "list"), ...)``."""
    yield path, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            seen: set[int] = set()
            for name, child in action.choices.items():
                if id(child) not in seen:  # an alias names the same parser again
                    seen.add(id(child))
                    yield from walk(child, (*path, name))


def is_leaf(parser: argparse.ArgumentParser) -> bool:
    """A parser that runs a command (it has no subcommands)."""
    return not any(isinstance(a, argparse._SubParsersAction) for a in parser._actions)


def add_command(
    sub: Any, name: str, func: Callable[[argparse.Namespace], int], help: str, *, json: bool = True
) -> argparse.ArgumentParser:
    """A subcommand that runs ``func``, with ``--json`` where its output is data."""
    parser: argparse.ArgumentParser = sub.add_parser(name, help=help)
    if json:
        parser.add_argument("--json", action="store_true", help="print the result as JSON")
    parser.set_defaults(func=func)
    return parser


def add_group(sub: Any, name: str, help: str, dest: str) -> Any:
    """A command group (``provisioner NAME ...``) and its subcommands' subparsers."""
    group: argparse.ArgumentParser = sub.add_parser(name, help=help)
    return group.add_subparsers(dest=dest, required=True)


def add_store_options(parser: argparse.ArgumentParser, what: str, env: str) -> None:
    """``--store DIR`` (a store on the control node, else ``$ENV`` or its default) and
    ``--json``."""
    parser.add_argument("--store", metavar="DIR", help=f"{what} (${env})")
    parser.add_argument("--json", action="store_true")
