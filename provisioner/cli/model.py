"""``provisioner model add|list|remove``: the model store (:mod:`provisioner.models.store`):
GGUF files (llama.cpp) and Hugging Face folders (vLLM).

Mounted by :mod:`provisioner.cli` with :func:`add_model_commands`; each subcommand sets
``func``. The store is ``--store DIR``, else ``$PROVISIONER_MODELS``, else the
configuration's ``<state_dir>/models`` (what `serve` serves at ``/models/``).
"""

from __future__ import annotations

import argparse
from typing import Any

from provisioner.cli.common import add_group, add_store_options, print_json, state_store, table
from provisioner.models.store import STORE_ENV, Model, ModelKind, ModelStore


def _store(args: argparse.Namespace) -> ModelStore:
    return ModelStore(state_store(args, "models", STORE_ENV))


def cmd_add(args: argparse.Namespace) -> int:
    model = _store(args).add(args.source, name=args.name)
    if args.json:
        print_json(model.to_json())
    else:
        print(f"{model.name}  {model.kind.value}  {_size(model)}  sha256 {model.sha256}")
    return 0


def _size(model: Model) -> str:
    files = f" in {model.files} files" if model.kind is ModelKind.HF else ""
    return f"{model.size / 1e6:.1f} MB{files}"


def cmd_list(args: argparse.Namespace) -> int:
    models = _store(args).list()
    if args.json:
        print_json([m.to_json() for m in models])
        return 0
    rows = [[m.name, m.kind.value, _size(m), m.sha256[:16]] for m in models]
    table(["NAME", "KIND", "SIZE", "SHA256"], rows)
    return 0


def cmd_remove(args: argparse.Namespace) -> int:
    model = _store(args).remove(args.name)
    if args.json:
        print_json({"removed": model.to_json()})
    else:
        print(f"removed {model.name}")
    return 0


def add_model_commands(subparsers: Any) -> None:
    """Register ``model add|list|remove`` on a top-level subparsers object."""
    what = "the model store (GGUF files, Hugging Face folders) served to the nodes"
    sub = add_group(subparsers, "model", what, "model_command")

    def with_store(p: argparse.ArgumentParser) -> None:
        add_store_options(p, "model store", "PROVISIONER_MODELS")

    add = sub.add_parser(
        "add",
        help="copy a GGUF file or a Hugging Face folder (config.json, *.safetensors) in",
    )
    add.add_argument("source", metavar="FILE|FOLDER|PACKAGE:RELPATH")
    add.add_argument(
        "--name", help="the model's name (default: the file name less .gguf, the folder's name)"
    )
    with_store(add)
    add.set_defaults(func=cmd_add)

    plist = sub.add_parser("list", help="every model: name, kind, size, sha256")
    with_store(plist)
    plist.set_defaults(func=cmd_list)

    remove = sub.add_parser("remove", help="delete a model and its file or folder")
    remove.add_argument("name")
    with_store(remove)
    remove.set_defaults(func=cmd_remove)
