"""The smoke pieces against a real vLLM server and a real 2-node Ray cluster on loopback.

vLLM (CPU, the control venv of tests/vllm_support.py) serves SmolLM2-135M as ``smollm2``
on 127.0.0.1; :func:`run_smoke` must pass on it (vLLM streams no llama.cpp ``timings``:
TTFT and tokens/s come from the wire), then the load check runs 12 requests, 4 at a time.

Ray: a head from ``ray start --head --block`` and a second node. ``ray start`` will not put
a second node on 127.0.0.1 (it swaps 127.0.0.1 for the machine's outward address, and
with ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0``, which keeps it, it refuses to join a node),
and any other address makes Ray bind every interface. So the second node is started the
way Ray's own ``cluster_utils.Cluster`` adds one, through ``ray._private.node.Node`` with
``node_ip_address="127.0.0.1"``: both nodes then share 127.0.0.1 and every Ray port binds
127.0.0.1 only. Two nodes on one address are told apart by their node manager ports
(``members`` as ``ip:port``), which :func:`ray_member_checks` takes for that case.

The venv and model come from ``PROVISIONER_TEST_VLLM_PYTHON`` / ``PROVISIONER_TEST_SMOLLM2_HF``
when set, else from tests/vllm_support.py (built once, cached). Only processes this test
started are stopped: their process groups, by PID, and then any descendant left.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from provisioner.smoke import Floors, render_table, run_smoke
from provisioner.smoke.client import SmokeHttpError, wait_healthy
from provisioner.smoke.load import chat_request, load_checks, run_load, summary_checks
from provisioner.smoke.ray import parse_ray_nodes, ray_checks, ray_nodes_command
from tests.integration.conftest import free_port, free_ports

pytestmark = pytest.mark.vllm

MODEL = "smollm2"


def _progress(line: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {line}", flush=True)


@pytest.fixture(scope="module")
def vllm_python() -> Path:
    given = os.environ.get("PROVISIONER_TEST_VLLM_PYTHON")
    if given:
        return Path(given)
    from tests.vllm_support import control_python

    return control_python()


@pytest.fixture(scope="module")
def smollm2(tmp_path_factory: pytest.TempPathFactory) -> Path:
    given = os.environ.get("PROVISIONER_TEST_SMOLLM2_HF")
    if given:
        return Path(given)
    from tests.vllm_support import smollm2_hf

    return smollm2_hf(tmp_path_factory.mktemp("hf"))


# ---------------------------------------------------------------------- processes


def _descendants(pid: int) -> set[int]:
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry.name))
    found: set[int] = set()
    todo = [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            if child not in found:
                found.add(child)
                todo.append(child)
    return found


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def stop_tree(proc: subprocess.Popen[bytes]) -> None:
    """TERM the process group this test started (its leader's PID), KILL what is left of
    it and of the leader's descendants (Ray's workers start sessions of their own)."""
    pids = _descendants(proc.pid) | {proc.pid}
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(30)
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline and any(_alive(p) for p in pids):
        time.sleep(0.5)
    for pid in pids:
        if _alive(pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
    if proc.poll() is None:
        proc.wait(10)


# ---------------------------------------------------------------------- vLLM


@pytest.fixture(scope="module")
def vllm_endpoint(
    vllm_python: Path, smollm2: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    port = free_port()
    log_path = tmp_path_factory.mktemp("vllm") / "vllm.log"
    argv = [
        str(vllm_python), "-m", "vllm.entrypoints.openai.api_server",
        "--model", str(smollm2), "--served-model-name", MODEL,
        "--host", "127.0.0.1", "--port", str(port),
        "--enforce-eager", "--max-model-len", "2048",
        "--gpu-memory-utilization", "0.45", "--dtype", "bfloat16",
    ]  # fmt: skip
    env = {
        **os.environ,
        "VLLM_CPU_KVCACHE_SPACE": "1",
        "VLLM_HOST_IP": "127.0.0.1",
        "VLLM_NO_USAGE_STATS": "1",
        "DO_NOT_TRACK": "1",
        "HF_HUB_OFFLINE": "1",
    }
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            argv, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True
        )
    endpoint = f"127.0.0.1:{port}"
    try:
        started = time.monotonic()
        while True:
            if proc.poll() is not None:
                raise AssertionError(f"vLLM exited {proc.returncode}:\n{log_path.read_text()}")
            try:
                wait_healthy(endpoint, timeout=5)
                break
            except SmokeHttpError as exc:
                if time.monotonic() - started > 600:
                    raise AssertionError(f"vLLM not up in 600 s:\n{log_path.read_text()}") from exc
        _progress(f"vLLM healthy after {time.monotonic() - started:.1f} s on {endpoint}")
        yield endpoint
    finally:
        stop_tree(proc)


def test_run_smoke_passes_on_vllm(vllm_endpoint: str) -> None:
    report = run_smoke("vllm-loopback", vllm_endpoint, MODEL, Floors(), "")
    print(render_table(report))
    assert report.passed, report.to_json()
    checks = {c.name: c for c in report.checks}
    assert list(checks) == ["health", "models", "completion", "ttft_s", "decode_tokens_per_s"]
    assert checks["models"].value == MODEL  # vLLM's ids are the served names
    completion, ttft, tps = checks["completion"], checks["ttft_s"], checks["decode_tokens_per_s"]
    assert isinstance(completion.value, int) and completion.value > 0
    assert isinstance(ttft.value, float) and ttft.value > 0
    assert isinstance(tps.value, float) and tps.value > 0
    assert report.stream["server_timings"] == {}  # no llama.cpp timings from vLLM
    assert report.stream["usage"]["completion_tokens"] >= completion.value


def test_load_check_on_vllm(vllm_endpoint: str) -> None:
    summary = run_load(chat_request(vllm_endpoint, MODEL, max_tokens=32), 12, 4)
    _progress(f"load: {json.dumps(summary.to_json())}")
    assert (summary.requests, summary.ok, summary.failed) == (12, 12, 0), summary.errors
    assert summary.rpm > 0 and summary.tokens > 0
    assert summary.p50_s is not None and summary.p99_s is not None
    assert 0 < summary.p50_s <= summary.p99_s <= summary.wall_s
    checks = summary_checks(summary, MODEL, min_rpm=1, max_p99_s=summary.p99_s)
    assert [c.name for c in checks] == [
        "load_rpm[smollm2]",
        "load_p99_s[smollm2]",
        "load_errors[smollm2]",
    ]
    assert all(c.passed for c in checks), checks
    # what the CLI calls, on a model vLLM does not serve: every request fails, no exception
    missing = load_checks(vllm_endpoint, "no-such-model", 2, 2)
    assert [c.passed for c in missing] == [False, False, False]
    assert missing[2].value == 2 and "404" in missing[2].detail


# ---------------------------------------------------------------------- Ray

WORKER_NODE = """
import json, signal, sys, time
import ray._private.node
from ray._private.parameter import RayParams
params = RayParams(**json.loads(sys.argv[1]))
node = ray._private.node.Node(params, head=False, shutdown_at_exit=True, spawn_reaper=False)
print(node.node_id, flush=True)
signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
while True:
    time.sleep(3600)
"""


def _ray_nodes(venv_bin: Path, gcs: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    command = ray_nodes_command(str(venv_bin), gcs)
    return subprocess.run(
        command, shell=True, capture_output=True, text=True, env=env, timeout=120, check=False
    )


def test_ray_members_on_loopback(vllm_python: Path) -> None:
    venv_bin = vllm_python.parent
    # short: Ray's unix sockets live under it and must fit in 107 bytes
    root = Path(tempfile.mkdtemp(prefix="ray-", dir="/tmp"))
    token = root / "token"
    token.write_text(secrets.token_hex(32))
    token.chmod(0o600)
    env = {
        **os.environ,
        "RAY_AUTH_MODE": "token",
        "RAY_AUTH_TOKEN_PATH": str(token),
        "RAY_USAGE_STATS_ENABLED": "0",
        "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",  # keep 127.0.0.1 (see the docstring)
    }
    ports = iter(free_ports(16))  # distinct: Ray refuses one port for two components
    gcs_port, head_nm, worker_nm = next(ports), next(ports), next(ports)
    head_argv = [
        str(venv_bin / "ray"), "start", "--head", "--block", "--disable-usage-stats",
        "--node-ip-address", "127.0.0.1", "--port", str(gcs_port),
        "--node-manager-port", str(head_nm), "--object-manager-port", str(next(ports)),
        "--include-dashboard", "false", "--dashboard-host", "127.0.0.1",
        "--dashboard-agent-listen-port", str(next(ports)),
        "--dashboard-agent-grpc-port", str(next(ports)),
        "--runtime-env-agent-port", str(next(ports)),
        "--metrics-export-port", str(next(ports)),
        "--ray-client-server-port", str(next(ports)),
        "--min-worker-port", "0", "--max-worker-port", "0",
        "--num-cpus", "1", "--num-gpus", "0", "--object-store-memory", str(80 * 2**20),
        "--temp-dir", str(root / "head"),
    ]  # fmt: skip
    worker_params = {
        "node_ip_address": "127.0.0.1",
        "gcs_address": f"127.0.0.1:{gcs_port}",
        "num_cpus": 1,
        "num_gpus": 1,  # a GPU on paper: the member check reads Ray's resource table
        "object_store_memory": 80 * 2**20,
        "node_manager_port": worker_nm,
        "object_manager_port": next(ports),
        "min_worker_port": 0,
        "max_worker_port": 0,
        "dashboard_agent_listen_port": next(ports),
        "metrics_agent_port": next(ports),
        "runtime_env_agent_port": next(ports),
        "metrics_export_port": next(ports),
        "temp_dir": str(root / "worker"),
        "include_log_monitor": False,
    }
    members = {"head": f"127.0.0.1:{head_nm}", "worker": f"127.0.0.1:{worker_nm}"}
    gpus = {"head": 0, "worker": 1}
    procs: list[subprocess.Popen[bytes]] = []
    try:
        with (root / "head.log").open("wb") as log:
            procs.append(subprocess.Popen(
                head_argv, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True
            ))  # fmt: skip
        _wait_nodes(venv_bin, f"127.0.0.1:{gcs_port}", env, 1, root, procs)
        with (root / "worker.log").open("wb") as log:
            procs.append(subprocess.Popen(
                [str(vllm_python), "-c", WORKER_NODE, json.dumps(worker_params)],
                stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True,
            ))  # fmt: skip
        started = time.monotonic()
        text = _wait_nodes(venv_bin, f"127.0.0.1:{gcs_port}", env, 2, root, procs)
        _progress(f"ray: 2 live nodes after {time.monotonic() - started:.1f} s")

        checks = ray_checks(text, members, gpus)
        for c in checks:
            _progress(f"ray: {c.name} {c.passed} {c.value} {c.detail}")
        assert all(c.passed for c in checks), checks
        assert [(c.name, c.value) for c in checks] == [
            ("ray_member[head]", 0),
            ("ray_member[worker]", 1),
            ("ray_nodes", 2),
        ]

        # without the token Ray turns the driver away: a failed check that says so
        bare = {k: v for k, v in env.items() if not k.startswith("RAY_AUTH")}
        refused = _ray_nodes(venv_bin, f"127.0.0.1:{gcs_port}", bare)
        assert refused.returncode != 0
        failed = ray_checks(refused.stdout + refused.stderr, members, gpus)
        assert not any(c.passed for c in failed)
        assert "refused the auth token" in failed[-1].detail

        # the worker stops: Ray has it dead, its member check fails and says so
        stop_tree(procs.pop())
        deadline = time.monotonic() + 60
        while True:
            text = _ray_nodes(venv_bin, f"127.0.0.1:{gcs_port}", env).stdout
            if sum(n.alive for n in parse_ray_nodes(text)) == 1:
                break
            assert time.monotonic() < deadline, text
            time.sleep(1)
        head, worker, count = ray_checks(text, members, gpus)
        assert head.passed and not worker.passed and not count.passed
        assert worker.detail.startswith(f"Ray has the node at 127.0.0.1:{worker_nm} dead")
    finally:
        for proc in reversed(procs):
            stop_tree(proc)
        shutil.rmtree(root, ignore_errors=True)


def _wait_nodes(
    venv_bin: Path,
    gcs: str,
    env: dict[str, str],
    alive: int,
    root: Path,
    procs: list[subprocess.Popen[bytes]],
) -> str:
    """The node list once ``alive`` nodes are up (the head answers within a minute)."""
    deadline = time.monotonic() + 120
    last = ""
    while time.monotonic() < deadline:
        for proc in procs:
            if proc.poll() is not None:
                logs = "\n".join(p.read_text()[-3000:] for p in root.glob("*.log"))
                raise AssertionError(f"a Ray process exited {proc.returncode}:\n{logs}")
        done = _ray_nodes(venv_bin, gcs, env)
        last = done.stdout + done.stderr[-2000:]
        if done.returncode == 0 and sum(n.alive for n in parse_ray_nodes(done.stdout)) >= alive:
            return done.stdout
        time.sleep(1)
    raise AssertionError(f"not {alive} live Ray nodes in 120 s:\n{last}")
