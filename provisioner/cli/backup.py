"""`provisioner backup FILE` and `provisioner restore FILE`: parse, call
:mod:`provisioner.backup`, print."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from provisioner.backup import Outcome, backup, restore
from provisioner.cli.common import add_command, load_cfg, print_json
from provisioner.power.credentials import candidate_files


def _state_dir(args: argparse.Namespace) -> Path:
    return Path(args.state_dir) if args.state_dir else load_cfg(args).state_dir


def cmd_backup(args: argparse.Namespace) -> int:
    state_dir = _state_dir(args)
    in_force = [p for p in candidate_files(None, state_dir) if p.is_file()]
    done = backup(
        state_dir, Path(args.file), credentials=in_force[0] if in_force else None,
        force=args.force,
    )  # fmt: skip
    _print(done, args.json, f"wrote {done.archive} ({done.size} bytes, mode 0600)")
    return 0


def cmd_restore(args: argparse.Namespace) -> int:
    done = restore(Path(args.file), _state_dir(args), force=args.force)
    made = done.manifest
    _print(
        done, args.json,
        f"restored {done.state_dir} from {done.archive} (provisioner {made.provisioner_version},"
        f" schema {made.schema_version})",
    )  # fmt: skip
    if not args.json and done.counts is None:
        print("the registry is upgraded at the next command that writes, or `provisioner serve`")
    return 0


def _print(done: Outcome, as_json: bool, headline: str) -> None:
    if as_json:
        print_json(done.as_dict())
        return
    print(headline)
    if done.counts is not None:
        print(f"  {done.counts['nodes']} nodes, {done.counts['clusters']} clusters")
    for item in done.manifest.files:
        print(f"  {item.path:28} {item.size:>10} bytes  sha256 {item.sha256[:16]}")
    if done.replaced:
        print(f"  replaced: {', '.join(done.replaced)}")


def add_backup_commands(sub: Any) -> None:
    b = add_command(
        sub, "backup", cmd_backup,
        "the registry, API token, SSH key, cluster keys and BMC passwords in one file",
    )  # fmt: skip
    b.add_argument("file", help="the backup to write (a .tar.gz, mode 0600)")
    b.add_argument("--force", action="store_true", help="replace FILE if it exists")
    b.add_argument("--state-dir", help="back up this state folder (default: the config's)")
    r = add_command(sub, "restore", cmd_restore, "unpack a backup into a state folder")
    r.add_argument("file", help="a file `provisioner backup` wrote")
    r.add_argument(
        "--force", action="store_true",
        help="restore into a folder that is not empty (replaces its registry and keys)",
    )  # fmt: skip
    r.add_argument("--state-dir", help="restore into this folder (default: the config's)")
