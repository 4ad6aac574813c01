"""The CUDA vLLM wheelhouse on a node of the image the CUDA profiles boot, with no GPU
(issue 25). Marked heavy: a 4 GB download (about 130 s here) and a 9 GB venv (about 150 s
to install); not in CI.

1. ``artifact build vllm --backend cuda --image debian-trixie`` (Python 3.13, from the
   image's manifest) into the lab's artifact store; its requirements carry CUDA 13.0,
   whose driver floor (580) is what post-install's NVIDIA step pins, and above Debian's.
2. A debian-trixie container node with a cache disk (``node disk init``: the 9 GB venv
   does not fit its volatile overlay) installs it as post-install does: requirements.txt
   fetched from the control node and its sha256 checked, then ``node_install_command``
   (``--no-index --no-deps --require-hashes``).
3. On the node: ``import vllm, torch`` works (torch built for CUDA 13.0, no device);
   ``vllm serve --help`` fails with vLLM's own "Failed to infer device type", and parses
   with ``VLLM_TARGET_DEVICE=cpu``.
4. vLLM's parser, on the node, accepts the rendered arguments for the RTX 2080 (half,
   AWQ, two models at 0.45 + 0.30) and the RTX 3060 pair (pipeline parallel 2 over Ray).
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

import pytest

from provisioner.artifacts import cuda_driver
from provisioner.artifacts.store import ArtifactStore
from provisioner.artifacts.wheel_files import node_install_command
from provisioner.artifacts.wheelhouse import INSTALLED
from provisioner.config import load_config
from provisioner.data import VLLM_ARGCHECK
from provisioner.postinstall import vllm
from provisioner.records import Cluster, Served
from tests.e2e.conftest import run_cli, ssh_node
from tests.vllm_support import rendered

pytestmark = pytest.mark.heavy

TURING = {"dtype": "half", "quantization": "awq", "backend": "cuda"}
AMPERE = {"dtype": "bfloat16", "quantization": "awq", "backend": "cuda"}


def test_the_cuda_wheelhouse_installs_and_parses_on_a_trixie_node(lab_dir: Path) -> None:
    up = run_cli(
        "lab", "up", "--dir", str(lab_dir), "--kind", "container", "--nodes", "1",
        "--image", "debian-trixie", "--disk", "16", "--timeout", "300",
    )  # fmt: skip
    assert up.returncode == 0, up.stderr[-4000:]
    config = str(lab_dir / "provisioner.toml")
    # The venv (9 GB) does not fit a container node's volatile overlay (a tmpfs of 10 % of
    # this machine's RAM: "No space left on device", seen here): a cache disk holds it, as
    # it would on a GPU node with less RAM than image + venv + models.
    disk = run_cli("--config", config, "node", "disk", "init", "ctr1",
                   "/dev/disk/by-id/lab-disk-ctr1", "--yes", "--json")  # fmt: skip
    assert disk.returncode == 0, disk.stderr[-3000:]
    cfg = load_config(Path(config))
    store = cfg.state_dir / "artifacts"
    built = run_cli("--config", config, "artifact", "build", "vllm", "--backend", "cuda",
                    "--image", "debian-trixie", "--store", str(store), "--json",
                    timeout=3000)  # fmt: skip
    assert built.returncode == 0, built.stderr[-4000:]
    name = "vllm-0.32.0-cuda-cp313"
    manifest = ArtifactStore(store).get(name)
    requirements = (store / manifest.file).read_text()
    cuda = cuda_driver.wheel_cuda(requirements)
    assert cuda == "13.0" and cuda_driver.min_driver(cuda) == 580
    estimate = int(manifest.inputs.get(INSTALLED) or 0)
    print(f"{name}: {manifest.size / 1e6:.0f} MB, venv estimate {estimate / 1e6:.0f} MB")

    # 2. as post-install: the requirements fetched and checked, then pip from the control node
    venv = f"{vllm.VENV_ROOT}/{name}"
    lock = f"/var/lib/provisioner/artifacts/{name}.requirements.txt"
    digest = hashlib.sha256(requirements.encode()).hexdigest()
    fetch = (
        f"mkdir -p /var/lib/provisioner/artifacts && curl -fsS -o {lock} "
        f"{cfg.http_base}/artifacts/{manifest.file} && echo '{digest}  {lock}' | sha256sum -c"
    )
    assert ssh_node(lab_dir, "ctr1", fetch).returncode == 0
    install = node_install_command(cfg.http_base, name, venv=venv, requirements=lock)
    logged = f"( {install} ) > /tmp/install.log 2>&1; rc=$?; tail -n 3 /tmp/install.log; exit $rc"
    started = time.monotonic()
    done = ssh_node(lab_dir, "ctr1", logged, timeout=1200)
    seconds = time.monotonic() - started
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    size = int(ssh_node(lab_dir, "ctr1", f"du -sb {venv} | cut -f1").stdout)
    print(f"installed in {seconds:.0f} s: venv {size / 1e6:.0f} MB")
    assert abs(size - estimate) < 0.05 * size  # venv_size.py's estimate holds

    # 3. torch for CUDA 13.0 with no device; vLLM's CLI cannot pick its platform
    python = f"{venv}/bin/python"
    probe = ssh_node(lab_dir, "ctr1", f"{python} -c 'import vllm, torch; "
                     "print(vllm.__version__, torch.version.cuda, torch.cuda.is_available())'",
                     timeout=300)  # fmt: skip
    assert probe.returncode == 0, probe.stderr[-3000:]
    assert probe.stdout.split()[-3:] == ["0.32.0", "13.0", "False"], probe.stdout
    bare = ssh_node(lab_dir, "ctr1", f"{venv}/bin/vllm serve --help 2>&1", timeout=300)
    assert bare.returncode != 0 and "Failed to infer device type" in bare.stdout
    cpu = ssh_node(lab_dir, "ctr1", f"VLLM_TARGET_DEVICE=cpu {venv}/bin/vllm serve --help",
                   timeout=300)  # fmt: skip
    assert cpu.returncode == 0, cpu.stdout[-2000:] + cpu.stderr[-2000:]

    # 4. the users' GPU clusters' arguments, judged by this vLLM's parser on the node
    motoko = Cluster("motoko", "vllm", "m", "ctr1", serve=(
        Served("reasoning", "mistral-7b-awq", 0.45, 8000),
        Served("embed", "bge-base", 0.30, 8001),
    ), options={"max_model_len": "4096", "quantization": "awq"})  # fmt: skip
    rtx = Cluster("rtx", "vllm", "qwen", "node0", ("node1",),
                  serve=(Served("qwen", "qwen2.5-14b-awq", None, 8000),))  # fmt: skip
    turing = [vllm.VllmMember("ctr1", "10.99.0.101", "host0", 1000, 1, TURING)]
    ampere = [
        vllm.VllmMember("node0", "10.0.0.10", "enp3s0", 100, 1, AMPERE),
        vllm.VllmMember("node1", "10.0.0.11", "enp3s0", 100, 1, AMPERE),
    ]
    argvs = rendered(motoko, turing) + rendered(rtx, ampere)
    script = VLLM_ARGCHECK.read_text()
    check = (
        f"cat > /tmp/argcheck.py <<'PYEOF'\n{script}\nPYEOF\n"
        f"VLLM_TARGET_DEVICE=cpu {python} -I /tmp/argcheck.py <<'JSONEOF'\n"
        f"{json.dumps(argvs)}\nJSONEOF\n"
    )
    judged = ssh_node(lab_dir, "ctr1", check, timeout=600)
    assert judged.returncode == 0, judged.stderr[-3000:]
    lines = [json.loads(x) for x in judged.stdout.splitlines() if x.startswith("{")]
    version, seen = lines[0], lines[1:]
    assert str(version.get("vllm")).startswith("0.32"), version
    assert len(seen) == 3 and not any("error" in s for s in seen), seen
    reasoning, embed, pp = seen
    assert reasoning["dtype"] == "half" and reasoning["gpu_memory_utilization"] == 0.45
    assert reasoning["quantization"] == "awq" and embed["gpu_memory_utilization"] == 0.3
    assert pp["pipeline_parallel_size"] == 2 and pp["distributed_executor_backend"] == "ray"
