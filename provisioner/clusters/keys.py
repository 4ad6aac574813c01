"""A cluster's secrets on the control node: made once, kept 0600 under
``<state_dir>/keys/`` (a 0700 folder), removed with the cluster.

- the **engine key**: what the cluster's servers require (llama-server
  ``--api-key-file``, vLLM's ``VLLM_API_KEY``). Only the gateway and smoke hold it; it
  reaches the head in a 0600 file and never appears on a command line;
- the **gateway key**: what a client of the cluster's gateway sends as ``Authorization:
  Bearer`` (``provisioner cluster key NAME`` shows it); the gateway never passes a
  client's header on, it sends the engine key upstream instead;
- the **Ray token**: Ray's token authentication between the members of a vLLM cluster.
"""

from __future__ import annotations

import hmac
import os
import secrets
from pathlib import Path

KINDS = ("engine", "gateway", "ray")


def key_path(state_dir: Path, cluster: str, kind: str) -> Path:
    if kind not in KINDS:
        raise ValueError(f"key kind {kind!r}: one of {', '.join(KINDS)}")
    return state_dir / "keys" / f"{cluster}.{kind}"


def secret(state_dir: Path, cluster: str, kind: str) -> str:
    """The cluster's ``kind`` secret, made on first use (O_EXCL: two callers at once get
    the same one)."""
    path = key_path(state_dir, cluster, kind)
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        os.chmod(path.parent, 0o700)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            pass
        else:
            with os.fdopen(fd, "w") as f:
                f.write(secrets.token_urlsafe(32) + "\n")
    return path.read_text().strip()


def existing(state_dir: Path, cluster: str, kind: str) -> str | None:
    """The secret if it was made (readers that must not make one: the gateway)."""
    path = key_path(state_dir, cluster, kind)
    return path.read_text().strip() if path.is_file() else None


def matches(expected: str | None, given: str | None) -> bool:
    """Constant-time comparison; nothing matches a secret that was never made."""
    return bool(expected) and given is not None and hmac.compare_digest(expected or "", given)


def forget(state_dir: Path, cluster: str) -> None:
    for kind in KINDS:
        key_path(state_dir, cluster, kind).unlink(missing_ok=True)
