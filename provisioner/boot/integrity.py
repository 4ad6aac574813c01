"""Whether a node runs the root image the control node published (pure; no I/O).

The boot script carries the sha256 of the image's ``root.squashfs`` (from its manifest,
``provisioner.root_sha256=``). The image's initramfs compares the root it fetched with it
before switching to it (``images/initramfs/provisioner-root-check``):

- on a mismatch it stops the boot and POSTs ``/api/v1/nodes/<mac>/integrity`` (a
  :class:`RootReport` as JSON) with the boot's token: the node fails, named why;
- on a match it leaves ``<sha256> initramfs`` in ``/run/provisioner/root.sha256``, which the
  agent sends with its inventory in the :data:`ROOT_HEADER` header (``sha256=<hex>;
  checked=initramfs``; an agent on an older initrd hashes the root itself: ``checked=agent``).

:func:`judge` compares what a node reports with what the control node published. The
verdict goes on the node's timeline (``integrity`` events); a mismatch fails the node and
its report is refused. Where nothing can be judged (an image without a fetched root, a
container node that has no squashfs, an image built before the check) the verdict says
so: ``unverified``, never ``verified``.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from enum import StrEnum

ROOT_HEADER = "X-Provisioner-Root"
SHA256 = re.compile(r"[0-9a-f]{64}")
CHECKERS = frozenset({"initramfs", "agent"})
MAX_REPORT_BYTES = 1024


class Verdict(StrEnum):
    VERIFIED = "verified"  # the node's root has the published sha256
    MISMATCH = "mismatch"  # it has another (or none could be read): the node fails
    UNVERIFIED = "unverified"  # a published root, but the node reported no digest
    NO_ROOT = "no-root"  # the image has no fetched root (all in its initrd): nothing to check


@dataclass(frozen=True)
class RootReport:
    """What a node says of the root it fetched."""

    sha256: str  # 64 hex digits, or "missing" when the file was not there
    checked: str  # "initramfs" | "agent"

    def as_detail(self) -> dict[str, str]:
        return {"sha256": self.sha256, "checked": self.checked}


class BadRootReport(ValueError):
    """A root report that cannot be read: the request is refused (422), nothing recorded."""


def _report(sha256: object, checked: object) -> RootReport:
    if not isinstance(sha256, str) or not (SHA256.fullmatch(sha256) or sha256 == "missing"):
        raise BadRootReport("sha256 must be 64 lower-case hex digits (or 'missing')")
    if checked not in CHECKERS:
        raise BadRootReport(f"checked must be one of {', '.join(sorted(CHECKERS))}")
    assert isinstance(checked, str)
    return RootReport(sha256, checked)


def parse_root_header(value: str | None) -> RootReport | None:
    """``sha256=<hex>; checked=initramfs|agent`` (None: no header)."""
    if value is None:
        return None
    fields: dict[str, str] = {}
    for part in value.split(";"):
        key, sep, item = part.strip().partition("=")
        if not sep or key in fields:
            raise BadRootReport(f"{ROOT_HEADER}: expected 'sha256=<hex>; checked=<who>'")
        fields[key] = item.strip()
    if set(fields) != {"sha256", "checked"}:
        raise BadRootReport(f"{ROOT_HEADER}: expected exactly the fields sha256 and checked")
    return _report(fields["sha256"], fields["checked"])


def parse_integrity_body(body: bytes) -> RootReport:
    """The initramfs' JSON report of a mismatch: ``{"sha256", "checked", ...}``."""
    if len(body) > MAX_REPORT_BYTES:
        raise BadRootReport(f"an integrity report is at most {MAX_REPORT_BYTES} bytes")
    try:
        data = json.loads(body)
    except (ValueError, RecursionError) as exc:
        raise BadRootReport(f"not JSON: {exc}") from None
    if not isinstance(data, dict):
        raise BadRootReport("an integrity report is a JSON object")
    return _report(data.get("sha256"), data.get("checked"))


def judge(published: str | None, reported: RootReport | None) -> Verdict:
    """``published``: the sha256 of the root the node's boot script named (None: none)."""
    if published is None:
        return Verdict.NO_ROOT
    if reported is None:
        return Verdict.UNVERIFIED
    return Verdict.VERIFIED if reported.sha256 == published else Verdict.MISMATCH


def failure_reason(image: str, published: str, reported: RootReport) -> str:
    """Why the node failed, in words for `node show`."""
    got = "no file" if reported.sha256 == "missing" else f"sha256 {reported.sha256[:16]}…"
    return (
        f"its root.squashfs of {image} is not the published one ({got}, published "
        f"{published[:16]}…, checked by the {reported.checked}): rebuild or restore the "
        "image, then power-cycle the node"
    )
