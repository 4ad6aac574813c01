"""Output helpers shared by the command modules: JSON, tables, timelines."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from provisioner.config import DEFAULT_CONFIG_PATH, DEFAULT_STATE_DIR, Config, load_config
from provisioner.errors import ConfigError
from provisioner.lab.lab import DEFAULT_LAB_DIR
from provisioner.records import Event
from provisioner.registry import Registry


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


def ago(ts: float) -> str:
    secs = max(0, int(time.time() - ts))
    if secs < 120:
        return f"{secs}s ago"
    if secs < 7200:
        return f"{secs // 60}m ago"
    return f"{secs // 3600}h ago"


def table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    for row in [header, *rows]:
        print("  ".join(str(c).ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())


def stamped(what: str) -> None:
    """A progress line on stderr, with the time: long work shows what it is doing."""
    print(f"[{time.strftime('%H:%M:%S')}] {what}", file=sys.stderr, flush=True)


def config_path(args: argparse.Namespace) -> Path:
    """--config, else $PROVISIONER_CONFIG, else the system's, else a running lab's."""
    if getattr(args, "config", None):
        return Path(args.config)
    if "PROVISIONER_CONFIG" in os.environ:
        return Path(os.environ["PROVISIONER_CONFIG"])

    lab_config = DEFAULT_LAB_DIR / "provisioner.toml"
    if not DEFAULT_CONFIG_PATH.exists() and lab_config.exists():
        return lab_config
    return DEFAULT_CONFIG_PATH


def load_cfg(args: argparse.Namespace) -> Config:
    """The configuration the command line points at (see ``config_path``)."""
    return load_config(config_path(args))


def open_registry(cfg: Config, *, readonly: bool = False) -> Registry:
    """The registry of ``cfg``; ``readonly``: for commands that only read (never writes,
    not even an upgrade: an old file is refused with what to run)."""
    return Registry(cfg.registry_path, readonly=readonly)


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
