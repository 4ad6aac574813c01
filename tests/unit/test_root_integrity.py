"""The root a node boots is the one published: the pure judgement, and the boot routes
(FastAPI's in-process client) that take the initramfs' and the agent's reports."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

import pytest

from provisioner.boot.integrity import (
    BadRootReport,
    RootReport,
    Verdict,
    judge,
    parse_integrity_body,
    parse_root_header,
)
from provisioner.config import Mode
from provisioner.discovery.model import SCHEMA
from provisioner.records import EventKind
from provisioner.states import NodeEvent, NodeState
from tests.unit.test_boot_tokens import MAC, NODE, Site

PUBLISHED = hashlib.sha256(b"R").hexdigest()  # Site publishes root.squashfs = b"R"
OTHER = hashlib.sha256(b"tampered").hexdigest()


# ------------------------------------------------------------------ pure


@pytest.mark.parametrize(
    ("header", "report"),
    [
        (None, None),
        (f"sha256={PUBLISHED}; checked=initramfs", RootReport(PUBLISHED, "initramfs")),
        (f"checked=agent;sha256={OTHER}", RootReport(OTHER, "agent")),
        ("sha256=missing; checked=initramfs", RootReport("missing", "initramfs")),
    ],
)
def test_root_header(header: str | None, report: RootReport | None) -> None:
    assert parse_root_header(header) == report


@pytest.mark.parametrize(
    "header",
    [
        "",
        f"sha256={PUBLISHED}",
        f"sha256={PUBLISHED}; checked=bios",
        f"sha256={PUBLISHED.upper()}; checked=agent",
        f"sha256={PUBLISHED[:-1]}; checked=agent",
        f"sha256={PUBLISHED}; checked=agent; extra=1",
        f"sha256={PUBLISHED}; sha256={PUBLISHED}; checked=agent",
        "sha256; checked=agent",
    ],
)
def test_a_bad_root_header_is_refused(header: str) -> None:
    with pytest.raises(BadRootReport):
        parse_root_header(header)


@pytest.mark.parametrize(
    "body",
    [b"", b"[]", b"{", b'{"sha256": "x", "checked": "initramfs"}', b"[" * 100_000, b" " * 2000],
)
def test_a_bad_integrity_body_is_refused(body: bytes) -> None:
    with pytest.raises(BadRootReport):
        parse_integrity_body(body)


def test_judge() -> None:
    assert judge(None, RootReport(OTHER, "agent")) is Verdict.NO_ROOT
    assert judge(PUBLISHED, None) is Verdict.UNVERIFIED
    assert judge(PUBLISHED, RootReport(PUBLISHED, "initramfs")) is Verdict.VERIFIED
    assert judge(PUBLISHED, RootReport(OTHER, "initramfs")) is Verdict.MISMATCH
    assert judge(PUBLISHED, RootReport("missing", "initramfs")) is Verdict.MISMATCH


# ------------------------------------------------------------------ routes


@pytest.fixture
def enrolled(tmp_path: Path) -> Site:
    """A node enrolled on debian-trixie (a fetched root) with its lease, full mode."""
    site = Site(tmp_path, Mode.FULL)
    site.lease()
    _, token = site.script(NODE)
    assert site.report(NODE, str(token)) == 202
    site.registry.set_profile(MAC, "qemu-lab")
    site.registry.transition(MAC, NodeEvent.MATCH)
    site.registry.transition(MAC, NodeEvent.ENROLL)
    return site


def image_boot(site: Site) -> str:
    """GET the script of the node's image boot: its token; checks the root's sha256."""
    r = site.client(NODE).get(f"/boot/{MAC}.ipxe")
    assert r.status_code == 200
    assert f"provisioner.root_sha256={PUBLISHED}" in r.text
    assert "fetch=" in r.text and "debian-trixie@1/root.squashfs" in r.text
    found = re.search(r"provisioner\.token=(\S+)", r.text)
    assert found is not None
    return found.group(1)


def report(site: Site, token: str, root: str | None) -> int:
    headers = {"Authorization": f"Bearer {token}"}
    if root is not None:
        headers["X-Provisioner-Root"] = root
    body = {"schema": SCHEMA, "firmware": "uefi", "memory_bytes": 8 << 30}
    r = site.client(NODE).post(f"/api/v1/nodes/{MAC}/inventory", json=body, headers=headers)
    return r.status_code


def verdicts(site: Site) -> list[object]:
    return [e.detail["verdict"] for e in site.registry.events(MAC) if e.kind is EventKind.INTEGRITY]


def state(site: Site) -> NodeState:
    node = site.registry.node(MAC)
    assert node is not None
    return node.state


def test_the_discovery_boot_carries_no_root_digest_and_records_no_verdict(tmp_path: Path) -> None:
    site = Site(tmp_path, Mode.FULL)
    site.lease()
    r = site.client(NODE).get(f"/boot/{MAC}.ipxe")
    assert r.status_code == 200 and "root_sha256" not in r.text
    _, token = site.script(NODE)
    assert site.report(NODE, str(token)) == 202
    assert verdicts(site) == []


def test_the_published_root_is_verified(enrolled: Site) -> None:
    token = image_boot(enrolled)
    assert report(enrolled, token, f"sha256={PUBLISHED}; checked=initramfs") == 202
    assert verdicts(enrolled) == ["verified"]
    assert state(enrolled) is NodeState.ENROLLED
    last = [e for e in enrolled.registry.events(MAC) if e.kind is EventKind.INTEGRITY][-1]
    assert last.detail["image"] == "debian-trixie@1"
    assert last.detail["published"] == PUBLISHED and last.detail["checked"] == "initramfs"


def test_a_report_without_a_digest_is_taken_as_unverified(enrolled: Site) -> None:
    token = image_boot(enrolled)
    assert report(enrolled, token, None) == 202
    assert verdicts(enrolled) == ["unverified"]


def test_another_root_fails_the_node_and_its_report_is_refused(enrolled: Site) -> None:
    inventory_before = enrolled.registry.inventory(MAC)
    token = image_boot(enrolled)
    assert report(enrolled, token, f"sha256={OTHER}; checked=agent") == 409
    assert verdicts(enrolled) == ["mismatch"]
    assert state(enrolled) is NodeState.FAILED
    why = [e.detail["why"] for e in enrolled.registry.events(MAC) if e.kind is EventKind.STATE]
    assert "not the published one" in str(why[-1]) and "power-cycle" in str(why[-1])
    assert enrolled.registry.inventory(MAC) == inventory_before  # nothing of it was taken


def test_a_malformed_root_header_is_422_and_spends_nothing(enrolled: Site) -> None:
    token = image_boot(enrolled)
    assert report(enrolled, token, "sha256=zz; checked=agent") == 422
    assert verdicts(enrolled) == [] and state(enrolled) is NodeState.ENROLLED
    assert report(enrolled, token, f"sha256={PUBLISHED}; checked=initramfs") == 202


def test_the_initramfs_report_fails_the_node_and_spends_the_boot(enrolled: Site) -> None:
    token = image_boot(enrolled)
    auth = {"Authorization": f"Bearer {token}"}
    body = {"file": "root.squashfs", "sha256": OTHER, "expected": PUBLISHED, "checked": "initramfs"}
    r = enrolled.client(NODE).post(f"/api/v1/nodes/{MAC}/integrity", json=body, headers=auth)
    assert r.status_code == 200, r.text
    assert r.json() == {"mac": MAC, "verdict": "mismatch", "state": "failed"}
    assert state(enrolled) is NodeState.FAILED
    # The boot's token is spent: nothing more of this boot is taken.
    assert report(enrolled, token, f"sha256={PUBLISHED}; checked=initramfs") == 401


def test_the_integrity_route_needs_this_boots_token(enrolled: Site) -> None:
    image_boot(enrolled)
    body = {"sha256": OTHER, "checked": "initramfs"}
    for headers in ({}, {"Authorization": "Bearer forged"}):
        r = enrolled.client(NODE).post(f"/api/v1/nodes/{MAC}/integrity", json=body, headers=headers)
        assert r.status_code == 401
    assert state(enrolled) is NodeState.ENROLLED and verdicts(enrolled) == []
