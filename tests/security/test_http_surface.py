"""The HTTP surface from the attacker's seat (``atk``): reads need the API token, request
bodies are held to their limits and to their sender's credentials before they are read,
JSON nested past any sane depth is a 400, odd file names are a 404, and HTTP listens on
the cluster address only.

The big bodies come from a small streaming client (:data:`CLIENT`, run in ``atk``): it
sends the head, then zeros 64 KiB at a time until the server answers, as curl does, and
prints the status and how many body bytes it got to send. The serve process's peak RSS
(``VmHWM``) shows whether the server read them.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from provisioner.registry import Registry
from tests.security.conftest import ATTACKER, HTTP_PORT, NODE_MAC, SERVER, Segment

pytestmark = [pytest.mark.root, pytest.mark.netns]

BIG = 300 * 1000 * 1000  # bytes: what the issue sent
RSS_BOUND_KIB = 200 * 1024  # serve idles near 70 MiB; reading 300 MB took it to 688-981 MiB
BOOT_TOKEN = "security-test-boot-token"

# argv: host port method path size length|chunked token content-type
CLIENT = r"""
import json, select, socket, sys
host, port, method, path, size, framing, token, ctype = sys.argv[1:9]
size, chunked = int(size), framing == "chunked"
head = [f"{method} {path} HTTP/1.1", f"Host: {host}:{port}", f"Content-Type: {ctype}"]
if token:
    head.append(f"Authorization: Bearer {token}")
head.append("Transfer-Encoding: chunked" if chunked else f"Content-Length: {size}")
s = socket.create_connection((host, int(port)), timeout=30)
s.sendall(("\r\n".join(head) + "\r\n\r\n").encode())
s.setblocking(False)
piece, pending, queued, sent, ended = b"\0" * 65536, b"", 0, 0, False
while True:
    if not pending and queued < size:
        n = min(len(piece), size - queued)
        pending = (b"%x\r\n%s\r\n" % (n, piece[:n])) if chunked else piece[:n]
        queued += n
    elif not pending and chunked and not ended:
        pending, ended = b"0\r\n\r\n", True
    readable, writable, _ = select.select([s], [s] if pending else [], [], 60)
    if readable or not writable:
        break  # the server answered (or closed), or nothing moved for a minute
    try:
        k = s.send(pending)
    except BlockingIOError:
        continue
    except OSError:
        break
    sent += k
    pending = pending[k:]
s.setblocking(True)
s.settimeout(30)
answer = b""
try:
    while b"\r\n\r\n" not in answer:
        more = s.recv(65536)
        if not more:
            break
        answer += more
except OSError as exc:
    answer += f"\r\n\r\n(recv: {exc})".encode()
status = answer.split(b" ", 2)[1].decode() if answer.startswith(b"HTTP/") else "000"
print(json.dumps({"status": int(status), "sent": sent, "head": answer[:400].decode("latin-1")}))
"""


def stream(
    segment: Segment,
    method: str,
    path: str,
    *,
    size: int = BIG,
    chunked: bool = False,
    token: str = "",
    content_type: str = "application/json",
) -> dict[str, object]:
    argv = [sys.executable, "-c", CLIENT, SERVER, str(HTTP_PORT), method, path, str(size),
            "chunked" if chunked else "length", token, content_type]  # fmt: skip
    done = segment.attacker.run(argv, check=False, timeout=600)
    assert done.returncode == 0, done.stderr
    answer: dict[str, object] = json.loads(done.stdout.strip().splitlines()[-1])
    return answer


def status(done: subprocess.CompletedProcess[str]) -> int:
    """The status code segment.curl put on the last line."""
    return int(done.stdout.rsplit("\n", 1)[-1])


def peak_rss_kib(segment: Segment) -> int:
    """VmHWM of the serve process: its resident set at its largest."""
    assert segment.app.proc is not None
    for line in Path(f"/proc/{segment.app.proc.pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise AssertionError("no VmHWM in /proc/<serve>/status")


def plant_boot_token(segment: Segment, mac: str = NODE_MAC) -> str:
    """A fresh per-boot token for ``mac`` that ``atk`` may use (bound to its address), as
    a boot script would have left it: the sender of an oversized body is authorized."""
    registry = Registry(segment.app.state / "registry.sqlite3")
    try:
        registry.touch_node(mac)
        if hasattr(registry, "issue_boot_token"):  # tokens bound to an address, with a life
            registry.issue_boot_token(
                mac, BOOT_TOKEN, asked_by=ATTACKER, bound_to=ATTACKER, expires=time.time() + 600
            )
        else:  # the registry before the boot-token rework
            registry.new_boot_token(mac, BOOT_TOKEN)
    finally:
        registry.close()
    return BOOT_TOKEN


def test_reads_need_the_api_token_and_metrics_stay_open(segment: Segment) -> None:
    segment.app.start()
    plant_boot_token(segment)
    base = segment.base
    for path in ("/api/v1/nodes", f"/api/v1/nodes/{NODE_MAC}", "/api/docs", "/openapi.json"):
        refused = segment.curl(segment.attacker, f"{base}{path}")
        assert status(refused) == 401, (path, refused.stdout)
        assert NODE_MAC not in refused.stdout
    assert status(segment.curl(segment.attacker, f"{base}/metrics")) == 200
    auth = f"Authorization: Bearer {segment.app.api_token}"
    listed = segment.curl(segment.attacker, "-H", auth, f"{base}/api/v1/nodes")
    assert status(listed) == 200 and NODE_MAC in listed.stdout


def test_a_300_mb_unauthenticated_patch_is_refused_unread(segment: Segment) -> None:
    segment.app.start()
    plant_boot_token(segment)
    before = peak_rss_kib(segment)
    declared = stream(segment, "PATCH", f"/api/v1/nodes/{NODE_MAC}")
    chunked = stream(segment, "PATCH", f"/api/v1/nodes/{NODE_MAC}", chunked=True)
    peak = peak_rss_kib(segment)
    print(f"serve VmHWM: {before} KiB idle, {peak} KiB after two 300 MB PATCHes;"
          f" sent {declared['sent']} and {chunked['sent']} bytes before the answer")  # fmt: skip
    assert declared["status"] == 401, declared
    assert chunked["status"] == 401, chunked
    assert peak < RSS_BOUND_KIB, f"serve peaked at {peak} KiB reading an unauthenticated body"


def test_a_300_mb_inventory_is_refused_unread(segment: Segment) -> None:
    segment.app.start()
    token = plant_boot_token(segment)
    url = f"/api/v1/nodes/{NODE_MAC}/inventory"
    before = peak_rss_kib(segment)
    anonymous = stream(segment, "POST", url)
    declared = stream(segment, "POST", url, token=token)
    chunked = stream(segment, "POST", url, token=plant_boot_token(segment), chunked=True)
    peak = peak_rss_kib(segment)
    print(f"serve VmHWM: {before} KiB idle, {peak} KiB after three 300 MB inventory POSTs;"
          f" sent {anonymous['sent']}, {declared['sent']}, {chunked['sent']} bytes")  # fmt: skip
    assert anonymous["status"] == 401, anonymous
    assert declared["status"] == 413, declared
    assert chunked["status"] == 413, chunked
    assert peak < RSS_BOUND_KIB, f"serve peaked at {peak} KiB reading an oversized inventory"
    health = segment.curl(segment.attacker, f"{segment.base}/healthz")
    assert status(health) == 200


def test_json_nested_100000_deep_is_a_400(segment: Segment, tmp_path: Path) -> None:
    """100,000 deep on the inventory (8 MiB allowed); an API write's 64 KiB holds 30,000."""
    segment.app.start()
    api = f"Authorization: Bearer {segment.app.api_token}"
    calls = [
        ("POST", f"/api/v1/nodes/{NODE_MAC}/inventory", 100_000),
        ("PATCH", f"/api/v1/nodes/{NODE_MAC}", 30_000),
    ]
    for method, path, depth in calls:
        token = plant_boot_token(segment)  # the inventory's token may be spent once
        auth = api if method == "PATCH" else f"Authorization: Bearer {token}"
        deep = tmp_path / f"deep-{depth}.json"
        deep.write_text("[" * depth + "]" * depth)
        done = segment.curl(
            segment.attacker, "-X", method, "-H", auth, "-H", "Content-Type: application/json",
            "--data-binary", f"@{deep}", f"{segment.base}{path}",
        )  # fmt: skip
        assert status(done) == 400, (path, done.stdout[-300:])
    assert status(segment.curl(segment.attacker, f"{segment.base}/healthz")) == 200


def test_a_file_name_over_255_bytes_is_a_404(segment: Segment) -> None:
    segment.app.start()
    for path in ("/tftp/" + "a" * 256, "/images/" + "b" * 300, "/models/x/" + "é" * 128):
        done = segment.curl(segment.attacker, f"{segment.base}{path}")
        assert status(done) == 404, (path, done.stdout[-300:])
    assert status(segment.curl(segment.attacker, f"{segment.base}/healthz")) == 200


def test_http_listens_on_the_cluster_address_unless_told_otherwise(segment: Segment) -> None:
    config = segment.app.config
    text = config.read_text()
    config.write_text("".join(ln for ln in text.splitlines(True) if not ln.startswith("bind")))
    segment.app.start()
    listening = segment.lab.host("prov").run(["ss", "-Htln", f"sport = :{HTTP_PORT}"]).stdout
    assert f"{SERVER}:{HTTP_PORT}" in listening, listening
    assert f"0.0.0.0:{HTTP_PORT}" not in listening and f"*:{HTTP_PORT}" not in listening
