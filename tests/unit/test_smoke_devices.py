"""Device and offload checks (smoke/devices.py) on llama.cpp's own log lines.

The lines follow llama.cpp b11434's format strings (src/llama.cpp "using device %s (%s)
(%s) - %zu MiB free", src/llama-model.cpp "offloaded %d/%d layers to GPU",
ggml-rpc.cpp's "Devices:" block), with the figures of the lab's lavapipe runs.
"""

from __future__ import annotations

from provisioner.smoke.devices import (
    Device,
    head_checks,
    head_devices,
    offloaded,
    rpc_server_devices,
    worker_checks,
)

USING = "llama_model_load_from_file_impl: using device"
VULKAN_HEAD = f"""\
{USING} Vulkan0 (llvmpipe (LLVM 19.1.7, 256 bits)) (unknown id) - 7914 MiB free
{USING} RPC0 (10.99.0.102:50052) (unknown id) - 7914 MiB free
{USING} RPC1 (10.99.0.103:50052) (unknown id) - 7914 MiB free
load_tensors: offloading output layer to GPU
load_tensors: offloaded 31/31 layers to GPU
load_tensors:      Vulkan0 model buffer size =    30.70 MiB
"""
CPU_HEAD = f"""\
{USING} RPC0 (10.99.0.102:50052) (unknown id) - 7914 MiB free
{USING} RPC1 (10.99.0.103:50052) (unknown id) - 7914 MiB free
load_tensors: offloaded 31/31 layers to GPU
load_tensors:   CPU_Mapped model buffer size =    27.00 MiB
"""
RPC_VULKAN = """\
WARNING: Host ('10.99.0.102') is != '127.0.0.1'
Starting RPC server v3.6.1
  endpoint       : 10.99.0.102:50052
  local cache    : n/a
Devices:
  Vulkan0: llvmpipe (LLVM 19.1.7, 256 bits) (7914 MiB, 7914 MiB free)
  transport      : TCP
Accepted client connection
"""
RPC_CPU = RPC_VULKAN.replace(
    "Vulkan0: llvmpipe (LLVM 19.1.7, 256 bits)", "CPU: AMD EPYC 7B13 64-Core Processor"
)


def test_the_head_s_devices_and_its_offload_are_read_from_its_log() -> None:
    assert head_devices(VULKAN_HEAD) == [
        Device("Vulkan0", "llvmpipe (LLVM 19.1.7, 256 bits)"),
        Device("RPC0", "10.99.0.102:50052"),
        Device("RPC1", "10.99.0.103:50052"),
    ]
    assert offloaded(VULKAN_HEAD) == (31, 31)
    assert offloaded("no such line") is None


def test_a_vulkan_head_passes_and_a_cpu_head_fails_though_its_layers_went_to_rpc() -> None:
    device, offload = head_checks("ctr1", "vulkan", VULKAN_HEAD)
    assert device.passed and device.value == "Vulkan0" and "llvmpipe" in device.detail
    assert offload.passed and (offload.value, offload.floor) == (31, 31)
    device, offload = head_checks("ctr1", "vulkan", CPU_HEAD)
    assert not device.passed and device.value == "CPU"
    assert "no Vulkan device: ctr1 ran its layers on the CPU" in device.detail
    assert not offload.passed and "none of them to a vulkan device of ctr1" in offload.detail
    partly = VULKAN_HEAD.replace("31/31", "20/31")
    assert not head_checks("ctr1", "vulkan", partly)[1].passed
    assert head_checks("ctr1", "cpu", CPU_HEAD) == []  # a CPU profile: nothing to prove


def test_a_head_whose_log_names_no_offload_fails() -> None:
    _, offload = head_checks("h", "cuda", "")
    assert not offload.passed and "no 'offloaded" in offload.detail


def test_each_worker_s_rpc_server_must_serve_on_the_profile_s_backend() -> None:
    assert rpc_server_devices(RPC_VULKAN) == [Device("Vulkan0", "llvmpipe (LLVM 19.1.7, 256 bits)")]
    assert rpc_server_devices("Starting RPC server v3.6.1\n") is None
    twice = RPC_CPU + RPC_VULKAN  # restarted with another build: the last start counts
    assert rpc_server_devices(twice) == [Device("Vulkan0", "llvmpipe (LLVM 19.1.7, 256 bits)")]
    checks = worker_checks(
        {"ctr2": "vulkan", "ctr3": "vulkan", "ctr4": "cuda", "ctr5": "cpu"},
        {"ctr2": RPC_VULKAN, "ctr3": RPC_CPU, "ctr4": ""},
    )
    by = {c.name: c for c in checks}
    assert set(by) == {"accelerator[ctr2]", "accelerator[ctr3]", "accelerator[ctr4]"}
    assert by["accelerator[ctr2]"].passed and by["accelerator[ctr2]"].value == "Vulkan0"
    assert not by["accelerator[ctr3]"].passed and by["accelerator[ctr3]"].value == "CPU"
    assert "does not serve on vulkan alone" in by["accelerator[ctr3]"].detail
    assert not by["accelerator[ctr4]"].passed
    assert "printed no devices" in by["accelerator[ctr4]"].detail


def test_a_worker_that_serves_a_gpu_and_the_cpu_fails() -> None:
    cpu = "  CPU: AMD EPYC 7B13 64-Core Processor (64000 MiB, 60000 MiB free)\n"
    both = RPC_VULKAN.replace("Devices:\n", "Devices:\n" + cpu)
    [check] = worker_checks({"w": "vulkan"}, {"w": both})
    assert not check.passed
