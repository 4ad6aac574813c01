"""The CUDA vLLM wheelhouse on a node of the image the CUDA profiles boot, with no GPU
(issue 25). Marked heavy: a 4 GB download (about 130 s here) and a 9 GB venv (about 150 s
to install); not in CI.

The lab's profile here is generic-cpu (what container nodes match) with ``engines.vllm``
saying ``backend: cuda`` and ``dtype: half``, as an RTX 2080's does: the node is planned
as a CUDA member, and it has no GPU.

1. ``artifact build vllm --backend cuda --image debian-trixie`` (Python 3.13, from the
   image's manifest) into the lab's artifact store; its requirements carry CUDA 13.0,
   whose driver floor (580) is what post-install's NVIDIA step pins, and above Debian's.
2. A debian-trixie container node with a cache disk (``node disk init``: the 9 GB venv
   does not fit its volatile overlay); ``cluster create --engine vllm`` and ``postinstall
   run`` install the wheelhouse as on any node (the requirements fetched and checked, then
   ``--no-index --no-deps --require-hashes``) and SmolLM2 as a Hugging Face folder.
3. On the node: ``import vllm, torch`` works (torch built for CUDA 13.0, no device);
   ``vllm serve --help`` fails with vLLM's own "Failed to infer device type", and parses
   with ``VLLM_TARGET_DEVICE=cpu``. What the wheelhouse leaves out (the video decoders
   opencv-python-headless and PyNvVideoCodec, CUTLASS's CUDA 12 flavor) is all that
   ``pip check`` misses; the modules that would use them import without them, and CUTLASS
   loads its CUDA 13 flavor.
4. vLLM's parser, on the node, accepts the rendered arguments for the RTX 2080 (half,
   AWQ, two models at 0.45 + 0.30) and the RTX 3060 pair (pipeline parallel 2 over Ray).
5. The server's unit, started by post-install on this GPU-less node, dies at once; smoke
   says so within seconds, with vLLM's own error line, not as a timeout.
"""

from __future__ import annotations

import json
import re
import shutil
import time
from pathlib import Path

import pytest

from provisioner.artifacts import cuda_driver
from provisioner.artifacts.store import ArtifactStore
from provisioner.artifacts.wheelhouse import INSTALLED
from provisioner.config import load_config
from provisioner.data import VLLM_ARGCHECK
from provisioner.postinstall import vllm
from provisioner.records import Cluster, Served
from tests.e2e.conftest import run_cli, ssh_node
from tests.e2e.test_cluster_lab import lab_cli
from tests.vllm_support import rendered

pytestmark = pytest.mark.heavy

TURING = {"dtype": "half", "quantization": "awq", "backend": "cuda"}
AMPERE = {"dtype": "bfloat16", "quantization": "awq", "backend": "cuda"}


ROOT = Path(__file__).resolve().parents[2]
GENERIC_VLLM = "  vllm:\n    dtype: bfloat16\n"
CUDA_VLLM = "  vllm:\n    backend: cuda\n    dtype: half\n"  # as rtx-turing's
# What the CUDA set leaves out (wheelhouse.py, cuda_driver.unused_flavors): the video
# decoders, and CUTLASS's CUDA 12 flavor (this set's CUDA is 13, which loads cu13's)
LEFT_OUT = ("nvidia-cutlass-dsl-libs-cu12", "opencv-python-headless", "pynvvideocodec")


def cuda_profiles(tmp_path: Path) -> Path:
    """The shipped profiles, generic-cpu's vLLM engine made a CUDA one (see the docstring)."""
    folder = tmp_path / "hwprofiles"
    shutil.copytree(ROOT / "hwprofiles", folder)
    generic = folder / "generic-cpu.yaml"
    assert GENERIC_VLLM in generic.read_text()
    generic.write_text(generic.read_text().replace(GENERIC_VLLM, CUDA_VLLM))
    return folder


def test_the_cuda_wheelhouse_installs_parses_and_fails_fast_on_a_trixie_node(
    lab_dir: Path, tmp_path: Path
) -> None:
    from tests import vllm_support

    up = run_cli(
        "lab", "up", "--dir", str(lab_dir), "--kind", "container", "--nodes", "1",
        "--image", "debian-trixie", "--disk", "16", "--timeout", "300",
        "--profiles", str(cuda_profiles(tmp_path)),
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
    for left_out in LEFT_OUT:
        assert f"\n{left_out}==" not in requirements.lower(), left_out
    estimate = int(manifest.inputs.get(INSTALLED) or 0)
    print(f"{name}: {manifest.size / 1e6:.0f} MB, venv estimate {estimate / 1e6:.0f} MB")

    # 2. as on any node: cluster create, then post-install installs the set and the model
    folder = vllm_support.smollm2_hf(lab_dir)
    added = run_cli("model", "add", str(folder), "--name", "smol", "--store",
                    str(cfg.state_dir / "models"), "--json")  # fmt: skip
    assert added.returncode == 0, added.stderr
    created = run_cli("--config", config, "cluster", "create", "gpu", "--engine", "vllm",
                      "--nodes", "ctr1", "--serve", "chat=smol", "--option",
                      "max_model_len=2048")  # fmt: skip
    assert created.returncode == 0, created.stderr
    started = time.monotonic()
    ran = lab_cli(lab_dir, "postinstall", "run", "gpu", "--json", timeout=3600)
    seconds = time.monotonic() - started
    print(f"post-install: {seconds:.0f} s, exit {ran.returncode}\n{ran.stdout[-3000:]}")
    print(ran.stderr[-3000:])
    venv = f"{vllm.VENV_ROOT}/{name}"
    size = int(ssh_node(lab_dir, "ctr1", f"du -sb {venv} | cut -f1").stdout)
    print(f"venv {size / 1e6:.0f} MB")
    assert abs(size - estimate) < 0.05 * size  # venv_size.py's estimate holds
    python = f"{venv}/bin/python"

    # 3. the video decoders left out: the only requirements missing, never needed to import
    checked = ssh_node(lab_dir, "ctr1", f"{python} -m pip check 2>&1", timeout=300)
    missing = set(re.findall(r"requires ([A-Za-z0-9_.-]+), which is not installed",
                             checked.stdout))  # fmt: skip
    print(checked.stdout[-2000:])
    assert {m.lower().replace("_", "-") for m in missing} == set(LEFT_OUT), checked.stdout
    modules = (
        "vllm.multimodal.video, vllm.multimodal.audio, vllm.multimodal.video_decoders, "
        "mistral_common.tokens.tokenizers.image, cutlass"
    )
    code = f"import sys, {modules}; print(sys.modules[CUTLASS_IR].__file__)"
    imported = ssh_node(lab_dir, "ctr1", f"VLLM_TARGET_DEVICE=cpu {python} -c "
                        f"'CUTLASS_IR = \"cutlass._mlir._mlir_libs._cutlass_ir\"; {code}'",
                        timeout=300)  # fmt: skip
    assert imported.returncode == 0, imported.stdout[-2000:] + imported.stderr[-2000:]
    assert "_cutlass_ir.cu13." in imported.stdout, imported.stdout  # CUTLASS's CUDA 13 flavor

    # 3. torch for CUDA 13.0 with no device; vLLM's CLI cannot pick its platform
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

    # 5. the unit post-install started cannot run without a GPU: smoke says why, at once
    started = time.monotonic()
    smoked = lab_cli(lab_dir, "smoke", "gpu", "--json", "--no-restart", timeout=900)
    took = time.monotonic() - started
    report = json.loads(smoked.stdout)
    checks = {c["name"]: c for c in report["checks"]}
    print(f"smoke: {took:.0f} s\n" + json.dumps(checks.get("health[chat]"), indent=2))
    assert smoked.returncode != 0 and not report["passed"]
    health = checks["health[chat]"]
    assert not health["passed"]
    assert "Failed to infer device type" in json.dumps(health), health
    assert took < 180, f"smoke took {took:.0f} s: a timeout, not a fast failure"
