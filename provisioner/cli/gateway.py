"""`provisioner gateway`: the front door's API keys, its status, and running it alone.

provisioner gateway key add NAME [--models a,b] [--rpm N]   # the key, shown once
provisioner gateway key list | remove NAME
provisioner gateway status [--json]                          # asks the running gateway
provisioner gateway serve [--listen ADDR:PORT]               # the front door alone
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import urllib.error
import urllib.request
from typing import Any

from provisioner.cli.common import Exit, add_command, add_group, load_cfg, open_registry, print_json
from provisioner.errors import UsageError
from provisioner.gateway import apikeys, source
from provisioner.gateway.routes import STATUS_PATH


def cmd_key_add(args: argparse.Namespace) -> int:
    cfg = load_cfg(args)
    models = tuple(m for m in (args.models or "").replace(" ", ",").split(",") if m) or None
    try:
        key, token = apikeys.make(args.name, models, args.rpm, now=time.time())
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    registry = open_registry(cfg)
    try:
        source.add_key(registry, key)
    finally:
        registry.close()
    url = f"{cfg.http_base}/v1"
    if args.json:
        print_json({**key.to_json(), "api_key": token, "base_url": url})
        return 0
    print("the key is shown this once; keep it (only its hash is kept here):", file=sys.stderr)
    print(f"OPENAI_BASE_URL={url}\nOPENAI_API_KEY={token}")
    return 0


def cmd_key_list(args: argparse.Namespace) -> int:
    cfg = load_cfg(args)
    registry = open_registry(cfg, readonly=True)
    try:
        found, used = source.list_keys(registry), source.usage(registry)
    finally:
        registry.close()
    totals: dict[str, dict[str, int]] = {}
    for row in used:
        t = totals.setdefault(
            row.key, {"requests": 0, "errors": 0, "tokens_in": 0, "tokens_out": 0}
        )
        for field in t:
            t[field] += getattr(row, field)
    if args.json:
        print_json({
            "keys": [{**k.to_json(), "usage": totals.get(k.name)} for k in found],
            "usage": [row.__dict__ for row in used],
        })  # fmt: skip
        return 0
    if not found:
        print("no keys: provisioner gateway key add NAME", file=sys.stderr)
    for k in found:
        t = totals.get(k.name, {})
        print(
            f"{k.name:20} pvk-{k.id}-...  models: {','.join(k.models) if k.models else 'all'}  "
            f"rpm: {k.rpm or '-'}  requests: {t.get('requests', 0)}  "
            f"tokens in/out: {t.get('tokens_in', 0)}/{t.get('tokens_out', 0)}"
        )
    return 0


def cmd_key_remove(args: argparse.Namespace) -> int:
    cfg = load_cfg(args)
    registry = open_registry(cfg)
    try:
        source.remove_key(registry, args.name)
    finally:
        registry.close()
    if args.json:
        print_json({"removed": args.name})
    else:
        print(f"{args.name}: removed (it stops working within a second)")
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    """The running gateway's replicas: state, health, load and figures."""
    cfg = load_cfg(args)
    base = args.url or f"http://127.0.0.1:{cfg.http.port}"
    token = cfg.api_token_path.read_text().strip() if cfg.api_token_path.is_file() else ""
    request = urllib.request.Request(
        base.rstrip("/") + STATUS_PATH, headers={"Authorization": f"Bearer {token}"}
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as answer:
            status: dict[str, Any] = json.loads(answer.read())
    except urllib.error.HTTPError as exc:
        print(f"the gateway at {base} refused the status ({exc.code}): it needs the API token "
              f"of {cfg.api_token_path}", file=sys.stderr)  # fmt: skip
        return Exit.FAILED
    except (urllib.error.URLError, OSError) as exc:
        print(f"cannot reach the gateway at {base}: {exc} (is provisioner serve running?)",
              file=sys.stderr)  # fmt: skip
        return Exit.FAILED
    if args.json:
        print_json(status)
        return 0
    mode = "OPEN (no key needed)" if status["open"] else f"keys required ({status['keys']} keys)"
    print(f"gateway {base}/v1: {mode}, routing {status['routing']}")
    if not status["models"]:
        print("  no cluster serves a model yet")
    for model, replicas in sorted(status["models"].items()):
        print(f"  {model}")
        for r in replicas:
            takes = "takes traffic" if r["takes_traffic"] else "drained"
            why = f" ({r['down_reason']})" if r["down_reason"] else ""
            errors = ", ".join(f"{k} {v}" for k, v in r["errors"].items()) or "none"
            print(
                f"    {r['cluster']:16} {r['state'] or '-':9} {takes}{why}; in flight "
                f"{r['outstanding']}, requests {r['requests']}, errors: {errors}; TTFT p50 "
                f"{_fmt(r['ttft_p50_s'], 's')}, decode p50 "
                f"{_fmt(r['decode_tokens_per_s_p50'], 'tok/s')} "
                f"(smoke: {_fmt(r['weight_decode_tokens_per_s'], 'tok/s')})"
            )
    return 0


def _fmt(value: float | None, unit: str) -> str:
    return "-" if value is None else f"{value:g} {unit}"


def cmd_serve(args: argparse.Namespace) -> int:
    from provisioner.boot.gateway_alone import run

    cfg = load_cfg(args)
    run(cfg, args.listen or cfg.gateway.listen)
    return 0


def add_gateway_commands(sub: Any) -> None:
    group = add_group(
        sub, "gateway", "the front door: one OpenAI URL (/v1) for every served model",
        "gateway_cmd",
    )  # fmt: skip
    keys = group.add_parser("key", help="the gateway's API keys")
    ksub = keys.add_subparsers(dest="key_cmd", required=True)
    add = add_command(ksub, "add", cmd_key_add, "make a key and show it (once)")
    add.add_argument("name", help="the key's name (who uses it): usage is counted by it")
    add.add_argument("--models", metavar="A,B", help="the served names it may use (default: all)")
    add.add_argument("--rpm", type=int, metavar="N", help="requests a minute (429 past it)")
    add_command(ksub, "list", cmd_key_list, "the keys, their scope and usage")
    rm = add_command(ksub, "remove", cmd_key_remove, "remove a key (it stops working at once)")
    rm.add_argument("name")
    status = add_command(group, "status", cmd_status, "each model's replicas: state, load, figures")
    status.add_argument("--url", help="a gateway elsewhere (default: this node's serve)")
    serve = add_command(group, "serve", cmd_serve, "run the front door alone", json=False)
    serve.add_argument("--listen", metavar="ADDR:PORT", help="default: [gateway] listen")
