"""Did the accelerator do the work? Device and offload checks from llama.cpp's own logs.

Pure: the logs in, :class:`~provisioner.smoke.report.Check` out.

- The head's log (``llama-server --log-verbosity 4``) names each device the model uses
  (``llama_model_load_from_file_impl: using device Vulkan0 (llvmpipe (LLVM 19.1.7, 256
  bits)) (unknown id) - 7914 MiB free``; RPC workers as ``RPC0 (10.0.0.3:50052)``) and how
  many layers went to them (``load_tensors: offloaded 31/31 layers to GPU``).
- A worker's RPC server prints its devices when it starts (``Devices:`` then
  ``  Vulkan0: llvmpipe (LLVM 19.1.7, 256 bits) (7914 MiB, 7914 MiB free)``); the head
  cannot see them (it knows a worker only by its endpoint).

A member whose profile names a GPU backend passes only when its server ran on a device of
that backend: a CPU build (or a driver that gave no device) fails with the devices it
used. Layers on RPC workers count as offloaded, so the head's own device is checked too.
A CPU profile gets no device checks (nothing to prove).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from provisioner.smoke.report import Check

# ggml's device names per llama.cpp backend (ggml_backend_dev_name: Vulkan0, CUDA0...).
DEVICE_PREFIX = {"vulkan": "Vulkan", "cuda": "CUDA", "sycl": "SYCL", "hip": "ROCm", "cpu": "CPU"}

_USING = re.compile(r"using device (\S+) \((.*)\) \(([^()]*)\) - (\d+) MiB free")
_OFFLOADED = re.compile(r"offloaded (\d+)/(\d+) layers to GPU")
_RPC_DEVICE = re.compile(r"^\s+(\S+): (.*) \((\d+) MiB, (\d+) MiB free\)\s*$")


@dataclass(frozen=True)
class Device:
    name: str  # Vulkan0, CUDA0, RPC1, CPU
    description: str  # llvmpipe (LLVM 19.1.7, 256 bits); an RPC device's endpoint

    def __str__(self) -> str:
        return f"{self.name} ({self.description})"


def head_devices(log: str) -> list[Device]:
    """The devices the head's model uses, in its log's order (each start truncates it)."""
    return [Device(m.group(1), m.group(2)) for m in _USING.finditer(log)]


def offloaded(log: str) -> tuple[int, int] | None:
    """(layers offloaded, layers in all) from the head's log (the last such line)."""
    found = _OFFLOADED.findall(log)
    return (int(found[-1][0]), int(found[-1][1])) if found else None


def rpc_server_devices(log: str) -> list[Device] | None:
    """The devices an RPC server serves, from its last start's ``Devices:`` block; None
    when its output holds none (it has not printed them yet)."""
    lines = log.splitlines()
    starts = [i for i, line in enumerate(lines) if line.strip() == "Devices:"]
    if not starts:
        return None
    found = []
    for line in lines[starts[-1] + 1 :]:
        m = _RPC_DEVICE.match(line)
        if not m:
            break
        found.append(Device(m.group(1), m.group(2)))
    return found


def _of(devices: Sequence[Device], backend: str) -> list[Device]:
    prefix = DEVICE_PREFIX.get(backend, backend)
    return [d for d in devices if re.fullmatch(rf"{re.escape(prefix)}\d*", d.name)]


def head_checks(host: str, backend: str, log: str) -> list[Check]:
    """``accelerator[host]`` (the head used a device of ``backend``) and ``offload``
    (every layer on a GPU device: its own or the workers'). None for a CPU backend."""
    if backend == "cpu":
        return []
    devices = head_devices(log)
    local = [d for d in devices if not d.name.startswith("RPC")]
    ours = _of(local, backend)
    shown = ", ".join(map(str, devices)) or "none named in its log"
    if ours:
        device = Check(f"accelerator[{host}]", True, ours[0].name, backend, f"devices: {shown}")
    else:
        prefix = DEVICE_PREFIX.get(backend, backend)
        device = Check(
            f"accelerator[{host}]", False, local[0].name if local else "CPU", backend,
            f"no {prefix} device: {host} ran its layers on the CPU (devices: {shown})",
        )  # fmt: skip
    layers = offloaded(log)
    if layers is None:
        offload = Check("offload", False, None, None, "no 'offloaded N/M layers' line in the log")
    else:
        done, total = layers
        offload = Check(
            "offload", done == total and bool(ours), done, total,
            f"{done}/{total} layers offloaded"
            + ("" if ours else f", none of them to a {backend} device of {host}"),
        )  # fmt: skip
    return [device, offload]


def worker_checks(backends: Mapping[str, str], logs: Mapping[str, str]) -> list[Check]:
    """``accelerator[worker]`` for each worker of a GPU backend: its RPC server serves
    devices of that backend, and no CPU."""
    checks = []
    for host, backend in backends.items():
        if backend == "cpu":
            continue
        devices = rpc_server_devices(logs.get(host, ""))
        name = f"accelerator[{host}]"
        if devices is None:
            checks.append(Check(name, False, None, backend, "its RPC server printed no devices"))
            continue
        ours = _of(devices, backend)
        shown = ", ".join(map(str, devices)) or "none"
        passed = bool(ours) and len(ours) == len(devices)
        value = ours[0].name if passed else (devices[0].name if devices else None)
        why = f"RPC server devices: {shown}"
        if not passed:
            why = f"its RPC server does not serve on {backend} alone ({why})"
        checks.append(Check(name, passed, value, backend, why))
    return checks
