"""Which replica takes a request, and which ones after it if it fails (pure).

:func:`order` ranks the candidates of one served name; the front door sends to the first
and, on a failure before the first byte, to the next. The rules:

- **Tiers first**: replicas whose head is ``serving`` before ``degraded`` ones
  (:data:`provisioner.gateway.replicas.TIERS`); a replica that is down is not ranked.
- **Least outstanding, weighted** (the default): the smallest ``(outstanding + 1) /
  weight``, where the weight is the decode tokens/s of the replica's last smoke (a replica
  never smoked counts as the median of those that were). A replica twice as fast takes
  about twice the requests in flight. Ties go round (``turn``), so equal replicas share.
- **Session affinity**, when the client names a session (``x-session-id`` header or the
  body's ``user``): rendezvous hashing (highest random weight, weighted) over the up
  replicas, so a session stays on its replica while it is up and only the sessions of a
  replica that goes down move.
- **Prefix-aware** (``[gateway] routing = "prefix"``): the same hashing over the start of
  the prompt, so requests that share a system prompt meet the server that has it cached,
  unless that replica has :data:`PREFIX_SLACK` more requests in flight than the least
  loaded one; then least outstanding decides.
"""

from __future__ import annotations

import hashlib
import json
import math
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum

PREFIX_SLACK = 4  # requests in flight a prefix's replica may have over the least loaded
PREFIX_CHARS = 512  # how much of the prompt's start names its prefix


class Routing(StrEnum):
    LEAST_OUTSTANDING = "least-outstanding"
    PREFIX = "prefix"


@dataclass(frozen=True)
class Candidate:
    """What the balancer needs of one replica at request time."""

    id: str
    tier: int  # 0 first (serving), 1 (degraded)
    outstanding: int  # requests in flight through this gateway
    decode_tps: float | None  # the last smoke's figure (None: never smoked)


def weights(candidates: Sequence[Candidate]) -> dict[str, float]:
    """Each candidate's weight: its decode tokens/s, the median of the known ones for a
    replica never smoked, 1.0 when none is known."""
    known = [c.decode_tps for c in candidates if c.decode_tps and c.decode_tps > 0]
    default = statistics.median(known) if known else 1.0
    return {
        c.id: c.decode_tps if c.decode_tps and c.decode_tps > 0 else default for c in candidates
    }


def _unit(key: str, replica: str) -> float:
    """A stable pseudo-random number in (0, 1) for (key, replica)."""
    digest = hashlib.blake2b(f"{key}\0{replica}".encode(), digest_size=8).digest()
    return (int.from_bytes(digest, "big") + 1) / (2**64 + 2)


def rendezvous(key: str, candidates: Sequence[Candidate], w: Mapping[str, float]) -> list[str]:
    """Weighted highest-random-weight ranking of ``candidates`` for ``key``."""
    scored = sorted(
        candidates, key=lambda c: (-w[c.id] / math.log(_unit(key, c.id)), c.id), reverse=True
    )
    return [c.id for c in scored]


def least_outstanding(
    candidates: Sequence[Candidate], w: Mapping[str, float], turn: int = 0
) -> list[str]:
    n = len(candidates)
    indexed = list(enumerate(candidates))
    ranked = sorted(
        indexed, key=lambda ic: ((ic[1].outstanding + 1) / w[ic[1].id], (ic[0] - turn) % n)
    )
    return [c.id for _, c in ranked]


def order(
    candidates: Sequence[Candidate],
    *,
    routing: Routing = Routing.LEAST_OUTSTANDING,
    session: str | None = None,
    prefix: str | None = None,
    turn: int = 0,
) -> list[str]:
    """The replicas to try, first choice first: each tier ranked, tiers in order."""
    ranked: list[str] = []
    for tier in sorted({c.tier for c in candidates}):
        group = [c for c in candidates if c.tier == tier]
        w = weights(group)
        if session:
            ranked += rendezvous(session, group, w)
        elif routing is Routing.PREFIX and prefix:
            by_load = least_outstanding(group, w, turn)
            least = min(c.outstanding for c in group)
            by_id = {c.id: c for c in group}
            cached = next(
                i for i in rendezvous(prefix, group, w)
                if by_id[i].outstanding <= least + PREFIX_SLACK
            )  # fmt: skip
            ranked += [cached, *(i for i in by_load if i != cached)]
        else:
            ranked += least_outstanding(group, w, turn)
    return ranked


def session_key(headers: Mapping[str, str], body: Mapping[str, object]) -> str | None:
    """The client's session: the ``x-session-id`` header, else the body's ``user``."""
    header = headers.get("x-session-id", "").strip()
    if header:
        return header[:256]
    user = body.get("user")
    return user[:256] if isinstance(user, str) and user else None


def prompt_prefix(body: Mapping[str, object]) -> str | None:
    """The start of the prompt (the messages' text in order, or ``prompt``)."""
    messages = body.get("messages")
    text = ""
    if isinstance(messages, list):
        for m in messages:
            if isinstance(m, dict):
                content = m.get("content")
                shown = content if isinstance(content, str) else json.dumps(content, sort_keys=True)
                text += f"{m.get('role')}:{shown}\n"
            if len(text) >= PREFIX_CHARS:
                break
    else:
        prompt = body.get("prompt")
        text = prompt if isinstance(prompt, str) else ""
    return text[:PREFIX_CHARS] or None
