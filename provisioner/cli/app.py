"""The `provisioner` command: thin; it parses, calls, prints.

Global options (``--config``, ``--log-level``) are taken before or after the
subcommand; every command's exit status follows one scheme (:mod:`.common`,
``docs/cli.md``, which ``scripts/gen-cli-doc`` writes from this parser).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from provisioner import __version__
from provisioner.cli.ansible import add_ansible_commands
from provisioner.cli.artifact import add_artifact_commands
from provisioner.cli.backup import add_backup_commands
from provisioner.cli.cluster import add_cluster_commands
from provisioner.cli.common import (
    Exit,
    add_command,
    exit_status,
    load_cfg,
    print_json,
    walk,
)
from provisioner.cli.config import add_config_commands
from provisioner.cli.console import add_console_command
from provisioner.cli.enroll import add_enroll_commands
from provisioner.cli.gateway import add_gateway_commands
from provisioner.cli.image import add_image_commands
from provisioner.cli.lab import add_lab_commands
from provisioner.cli.model import add_model_commands
from provisioner.cli.node import add_node_commands
from provisioner.cli.power import add_node_add_command, add_power_commands
from provisioner.cli.profile import add_profile_commands
from provisioner.cli.service import add_service_commands
from provisioner.cli.smoke import add_smoke_command
from provisioner.config import DEFAULT_CONFIG_PATH
from provisioner.discovery.accelerators import accelerators
from provisioner.discovery.dumps import parse_dump
from provisioner.discovery.schema import inventory_schema
from provisioner.errors import ProvisionerError

log = logging.getLogger("provisioner")

LOG_LEVELS = ("debug", "info", "warning", "error")
LOG_ENV = "PROVISIONER_LOG"
COMPLETION_SHELLS = ("bash", "zsh", "tcsh")  # what shtab writes
STATUS_LINE = ", ".join(f"{int(e)} {e.name.lower().replace('_', ' ')}" for e in Exit)


# ---------------------------------------------------------------- serve


def cmd_serve(args: argparse.Namespace) -> int:
    # Lazy: serve brings uvicorn, FastAPI and the boot services (~0.3 s); no other command
    # needs them.
    from provisioner.serve import run_forever

    cfg = load_cfg(args)
    run_forever(cfg)
    return 0


# ---------------------------------------------------------------- hardware dumps


def cmd_inventory_parse(args: argparse.Namespace) -> int:
    from dataclasses import asdict

    results = []
    for name in args.files:
        text = sys.stdin.read() if name == "-" else Path(name).read_text(errors="replace")
        result = parse_dump(text)
        found = accelerators(result.inventory)
        results.append(
            {
                "file": name,
                "format": result.format,
                "partial": result.inventory.partial,
                "accelerators": [
                    {
                        "slug": a.slug,
                        "vendor": a.vendor,
                        "device": a.device,
                        "name": a.name,
                        "count": a.count,
                    }
                    for a in found
                ],
                "pci_devices": len(result.inventory.pci),
                "sections": [section.as_dict() for section in result.sections],
                "carriers": list(result.carriers),
                "problems": list(result.inventory.problems),
                **({"inventory": asdict(result.inventory)} if args.full else {}),
            }
        )
    if args.json:
        print_json(results)
    else:
        for r in results:
            accels = ", ".join(f"{a['slug']} x{a['count']}" for a in r["accelerators"]) or "none"
            print(
                f"{r['file']}: {r['format'] or 'unknown format'}; accelerators: {accels}"
                + ("; partial" if r["partial"] else "")
            )
            for problem in r["problems"]:
                print(f"  - {problem}")
    return 0 if all(r["format"] for r in results) else 1


# ---------------------------------------------------------------- profiles


def cmd_profile_reload(args: argparse.Namespace) -> int:
    """Ask the running appliance to re-read hwprofiles/ and re-fingerprint its nodes."""
    import urllib.error
    import urllib.request

    cfg = load_cfg(args)
    token = cfg.api_token_path.read_text().strip()
    host = "127.0.0.1" if cfg.http.bind in ("0.0.0.0", "127.0.0.1") else cfg.http.bind
    url = f"http://{host}:{cfg.http.port}/api/v1/profiles/reload"
    request = urllib.request.Request(
        url, method="POST", headers={"Authorization": f"Bearer {token}"}
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as answer:
            result = json.loads(answer.read())
    except urllib.error.HTTPError as exc:
        detail = json.loads(exc.read() or b"{}").get("detail")
        if args.json:
            print_json({"status": exc.code, "detail": detail})
        elif isinstance(detail, dict):
            print(detail.get("error"), file=sys.stderr)
            for problem in detail.get("problems", []):
                print(f"  {problem}", file=sys.stderr)
        else:
            print(f"reload refused ({exc.code}): {detail}", file=sys.stderr)
        return Exit.REFUSED if exc.code == 409 else Exit.FAILED
    except OSError as exc:
        print(
            f"cannot reach provisioner serve at {url}: {exc} "
            "(is it running? `kill -HUP <its pid>` reloads too)",
            file=sys.stderr,
        )
        return 1
    if args.json:
        print_json(result)
        return 0
    print(f"{result['profiles']} profiles loaded; {len(result['changed'])} nodes changed profile")
    for c in result["changed"]:
        print(f"  {c['mac']} ({c['hostname'] or '-'}): {c['before'] or '-'} -> {c['after'] or '-'}")
    return 0


def cmd_inventory_schema(args: argparse.Namespace) -> int:

    print_json(inventory_schema())
    return 0


# ---------------------------------------------------------------- completion


def cmd_completion(args: argparse.Namespace) -> int:
    """A completion script for the shell (shtab reads it off the parser)."""
    import shtab

    print(shtab.complete(build_parser(), shell=args.shell), end="")
    return 0


# ---------------------------------------------------------------- parser


def add_global_options(parser: argparse.ArgumentParser, *, top: bool) -> None:
    """``--config`` and ``--log-level``: on the top parser with their defaults, on every
    subparser with SUPPRESS (a subcommand's copy sets the value only when it is given, so
    ``provisioner --config A node list`` keeps A and ``provisioner node list --config B``
    takes B)."""
    default_log = os.environ.get(LOG_ENV, "info") if top else argparse.SUPPRESS
    parser.add_argument(
        "--config",
        metavar="FILE",
        default=None if top else argparse.SUPPRESS,
        help=f"config file (default: $PROVISIONER_CONFIG, else {DEFAULT_CONFIG_PATH})",
    )
    parser.add_argument(
        "--log-level",
        type=str.lower,
        choices=LOG_LEVELS,
        default=default_log,
        help=f"debug, info, warning or error, any case (default: ${LOG_ENV} or info)",
    )


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="provisioner",
        description=__doc__.split("\n\n")[0],
        epilog=f"exit status: {STATUS_LINE} (docs/cli.md)",
    )
    p.add_argument("--version", action="version", version=f"provisioner {__version__}")
    add_global_options(p, top=True)
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    add_config_commands(sub)
    add_command(sub, "serve", cmd_serve, "run DHCP, TFTP and HTTP boot services", json=False)
    add_service_commands(sub)

    node_sub = add_node_commands(sub)
    add_node_add_command(node_sub, load_cfg)
    add_console_command(node_sub)
    add_power_commands(sub, load_cfg)

    add_enroll_commands(sub)

    inventory = sub.add_parser("inventory", help="hardware dumps (lspci, lshw, nvidia-smi, ...)")
    inventory_sub = inventory.add_subparsers(dest="subcommand", required=True)
    parse = inventory_sub.add_parser("parse", help="detect a dump's format, list accelerators")
    parse.add_argument("files", nargs="+", help="dump files; - reads standard input")
    parse.add_argument("--json", action="store_true")
    parse.add_argument("--full", action="store_true", help="with --json: the whole inventory")
    parse.set_defaults(func=cmd_inventory_parse)
    ischema = inventory_sub.add_parser("schema", help="the inventory's JSON Schema")
    ischema.set_defaults(func=cmd_inventory_schema)

    profile_sub = add_profile_commands(sub)
    reload = profile_sub.add_parser("reload", help="re-fingerprint nodes in the running serve")
    reload.add_argument("--json", action="store_true")
    reload.set_defaults(func=cmd_profile_reload)

    add_image_commands(sub)

    add_lab_commands(sub)

    add_artifact_commands(sub)
    add_model_commands(sub)

    add_cluster_commands(sub)
    add_smoke_command(sub)
    add_backup_commands(sub)
    add_ansible_commands(sub)
    add_gateway_commands(sub)

    completion = sub.add_parser("completion", help="a shell completion script (bash, zsh)")
    completion.add_argument("shell", choices=COMPLETION_SHELLS)
    completion.set_defaults(func=cmd_completion)

    for _, parser in walk(p):
        if parser is not p:
            add_global_options(parser, top=False)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
        if args.log_level not in LOG_LEVELS:  # the default, from the environment
            parser.error(f"${LOG_ENV}={args.log_level!r}: use one of {', '.join(LOG_LEVELS)}")
    except SystemExit as exc:  # --help, --version: 0; a usage error: 2 (said on stderr)
        return exc.code if isinstance(exc.code, int) else Exit.USAGE
    logging.basicConfig(
        level=args.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    if args.log_level != "debug":  # one line per SSH session and SFTP file: noise
        logging.getLogger("paramiko").setLevel(logging.WARNING)
    try:
        return int(args.func(args))
    except ProvisionerError as exc:
        log.debug("%s", type(exc).__name__, exc_info=True)
        print(f"provisioner: {exc}", file=sys.stderr)
        return exit_status(exc)
    except KeyboardInterrupt:
        return Exit.INTERRUPTED
    except BrokenPipeError:  # `provisioner ... | head`: the reader left; not an error
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return Exit.OK
    except OSError as exc:  # a file or device the command could not read or write
        log.debug("%s", type(exc).__name__, exc_info=True)
        print(f"provisioner: {exc}", file=sys.stderr)
        return Exit.FAILED


if __name__ == "__main__":
    sys.exit(main())
