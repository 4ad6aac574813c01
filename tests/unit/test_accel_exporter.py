"""The node's accelerator exporter (images/agent/provisioner-accel-exporter, run by the
node's python3): its parsers against real tool output and sysfs files, its rendering.

nvidia-smi: the real ``nvidia-smi -q -x`` reports in ../shared/fixtures/hw (RTX 2070 x2,
Tesla T4, A100 in MIG mode). xpu-smi: no real dump of ours exists, so its CSV is the one
Intel's guide prints (doc/smi_user_guide.md of intel/xpumanager), headers and spacing
kept. amdgpu and i915: sysfs files are one number each; the values are typical readings.
"""

from __future__ import annotations

import importlib.machinery
import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest

from tests.shared_fixtures import HW, needs_hw

SCRIPT = Path(__file__).resolve().parents[2] / "images" / "agent" / "provisioner-accel-exporter"


def _load() -> ModuleType:
    loader = importlib.machinery.SourceFileLoader("accel_exporter", str(SCRIPT))
    spec = importlib.util.spec_from_loader("accel_exporter", loader)
    assert spec is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["accel_exporter"] = module  # dataclasses look their module up there
    loader.exec_module(module)
    return module


ax = _load()
MiB = 1 << 20


@needs_hw
def test_nvidia_smi_xml_two_rtx_2070s() -> None:
    text = (HW / "rtx2070-x2__nvidia-smi-q-x__telegraf-pr18176.xml").read_text()
    first, second = ax.parse_nvidia_smi_xml(text)
    assert (first.gpu, first.bus, first.model) == ("0", "0000:01:00.0", "NVIDIA GeForce RTX 2070")
    assert first.values == {
        "utilization_ratio": 0.0,
        "memory_used_bytes": 1 * MiB,
        "memory_total_bytes": 8192 * MiB,
        "temperature_celsius": 14.0,
        "power_watts": 9.23,  # <gpu_power_readings><instant_power_draw> (driver 590)
    }
    assert (second.gpu, second.bus) == ("1", "0000:02:00.0")
    assert second.values["power_watts"] == 11.82


@needs_hw
def test_nvidia_smi_xml_older_and_mig_layouts() -> None:
    t4 = ax.parse_nvidia_smi_xml(
        (HW / "tesla-t4-aws-vm__nvidia-smi-q-x__telegraf-testdata.xml").read_text()
    )
    assert [(d.bus, d.model) for d in t4] == [("0000:00:1e.0", "Tesla T4")]
    assert t4[0].values["power_watts"] == 26.78  # <power_readings><power_draw> (driver 515)
    assert t4[0].values["memory_used_bytes"] == 1032 * MiB
    a100 = ax.parse_nvidia_smi_xml(
        (HW / "a100-sxm4-80gb-attached4-listed1__nvidia-smi-q-x-PARTIAL__telegraf-testdata.xml")
        .read_text()
    )  # fmt: skip
    (gpu,) = a100
    # MIG on: the whole GPU's memory, not a MIG slice's; its utilization is N/A: left out
    assert gpu.values["memory_total_bytes"] == 81920 * MiB
    assert "utilization_ratio" not in gpu.values
    assert gpu.values["power_watts"] == 67.03


XPU_DUMP = """\
Timestamp, DeviceId, GPU Utilization (%), GPU Power (W), GPU Core Temperature (Celsius Degree), GPU Memory Utilization (%), GPU Memory Used (MiB)
06:14:46.000,    1, 37.50, 14.61, 41.00, 2.10, 1534.00
"""  # noqa: E501


def test_xpu_smi_dump_columns_by_header() -> None:
    (device,) = ax.parse_xpu_dump(XPU_DUMP)
    assert (device.gpu, device.vendor, device.source) == ("1", "intel", "xpu-smi")
    assert device.values == {
        "utilization_ratio": 0.375,
        "power_watts": 14.61,
        "temperature_celsius": 41.0,
        "memory_used_bytes": 1534 * MiB,
    }
    # The guide's own example (other columns, "N/A" where a metric is not supported)
    guide = (
        "Timestamp, DeviceId, GPU Utilization (%), GPU Power (W), GPU Frequency (MHz)\n"
        "06:14:46.000,    0, N/A, 14.61,    0\n"
    )
    assert ax.parse_xpu_dump(guide)[0].values == {"power_watts": 14.61}
    assert ax.parse_xpu_dump("") == []
    assert ax.parse_xpu_discovery('{"device_list": [{"device_id": 0}, {"device_id": 1}]}') == [
        "0",
        "1",
    ]


def test_amdgpu_and_i915_sysfs() -> None:
    amd = ax.parse_drm_card(
        "card1",
        {
            "vendor": "0x1002\n",
            "device": "0x1586\n",
            "gpu_busy_percent": "12\n",
            "mem_info_vram_used": "536870912\n",
            "mem_info_vram_total": "17179869184\n",
            "hwmon/temp1_input": "45000\n",  # millidegrees
            "hwmon/power1_average": "23000000\n",  # microwatts
            "uevent_slot": "0000:c5:00.0",
        },
    )
    assert (amd.gpu, amd.bus, amd.vendor, amd.model) == ("1", "0000:c5:00.0", "amd", "0x1586")
    assert amd.values == {
        "utilization_ratio": 0.12,
        "memory_used_bytes": 536870912,
        "memory_total_bytes": 17179869184,
        "temperature_celsius": 45.0,
        "power_watts": 23.0,
    }
    arc = ax.parse_drm_card(
        "card0",
        {"vendor": "0x8086\n", "device": "0x56a0\n", "hwmon/energy1_input": "123456789\n"},
    )
    assert arc.vendor == "intel" and arc.values == {"energy_joules_total": 123.456789}
    # A VM's virtual display (virtio-gpu, bochs) is no accelerator
    assert ax.parse_drm_card("card0", {"vendor": "0x1af4\n"}) is None


def test_render_is_prometheus_text_and_empty_without_devices() -> None:
    assert ax.render([]) == ""
    device = ax.Device(
        gpu="0", bus="0000:01:00.0", source="nvidia-smi", vendor="nvidia",
        model='Odd "name"\\', values={"memory_total_bytes": 8192 * MiB, "power_watts": 9.23},
    )  # fmt: skip
    text = ax.render([device])
    assert (
        'accel_info{gpu="0",bus="0000:01:00.0",source="nvidia-smi",vendor="nvidia",'
        'model="Odd \\"name\\"\\\\"} 1'
    ) in text.splitlines()
    assert (
        'accel_memory_total_bytes{gpu="0",bus="0000:01:00.0",source="nvidia-smi"} 8589934592'
        in text
    )
    assert "# TYPE accel_power_watts gauge" in text
    assert "accel_temperature_celsius" not in text  # no sample, no series


@pytest.mark.parametrize(
    ("text", "expected"),
    [("14 C", 14.0), ("9.23 W", 9.23), ("N/A", None), ("", None), ("-3", -3.0)],
)
def test_number(text: str, expected: float | None) -> None:
    assert ax._number(text) == expected
