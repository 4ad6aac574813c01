"""A boot segment for the reliability checks (issue 20, items 3 and 4), shared by the CI
tests (test_live_fuzz.py, test_starvation.py) and bench/reliability_bench.py.

Three namespaces on one bridge: ``srv`` runs `provisioner serve` (full mode, a stand-in
image), ``load`` sends the hostile traffic, ``node`` boots with the lab's scripted client
(:func:`provisioner.lab.simulate.boot_node`: DHCP, TFTP of iPXE, iPXE's DHCP, script,
kernel and initrd). Counters come from serve's /metrics and the ``srv`` namespace's
/proc/net/snmp (what the kernel dropped before serve could read it).
"""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from ipaddress import IPv4Interface
from pathlib import Path

from provisioner.lab.netns import HostSpec, LabNetwork, Namespace
from provisioner.lab.simulate import NodeRun, boot_node
from tests.integration.conftest import Appliance, make_image, write_config

SERVER, LOAD = "10.53.0.1", "10.53.0.2"
NODE_MAC = "02:53:00:00:00:01"
BOOT_STEPS = ("dhcp", "tftp", "ipxe-dhcp", "script", "kernel", "initrd")
_SAMPLE = re.compile(r"^([a-z_]+(?:\{[^}]*\})?) (\S+)$")


@dataclass
class Segment:
    lab: LabNetwork
    app: Appliance
    work: Path
    boots: int = 0

    @property
    def load(self) -> Namespace:
        return self.lab.host("load")

    def metrics(self) -> dict[str, float]:
        """serve's samples, ``name{labels}`` -> value."""
        url = f"{self.app.base}/metrics"
        text = self.load.run(["curl", "-s", "--max-time", "20", url]).stdout
        return {m[1]: float(m[2]) for line in text.splitlines() if (m := _SAMPLE.match(line))}

    def udp(self) -> dict[str, int]:
        """The ``srv`` namespace's UDP counters (InDatagrams, RcvbufErrors, ...)."""
        text = self.lab.host("srv").run(["cat", "/proc/net/snmp"]).stdout
        head, values = [line.split()[1:] for line in text.splitlines() if line.startswith("Udp:")]
        return dict(zip(head, map(int, values), strict=True))

    def boot(self) -> tuple[float, NodeRun]:
        """Boot the node once; (seconds, its run). Each step must pass."""
        self.boots += 1
        started = time.monotonic()
        run = boot_node(
            self.lab.host("node"), f"boot{self.boots}", NODE_MAC, "bios", self.work,
            lambda _name, _line: None,
        )  # fmt: skip
        return time.monotonic() - started, run

    def alive(self) -> bool:
        return self.app.proc is not None and self.app.proc.poll() is None


def booted(run: NodeRun) -> bool:
    return run.ok and tuple(s.name for s in run.steps) == BOOT_STEPS


@contextmanager
def segment(work: Path) -> Iterator[Segment]:
    hosts = [
        HostSpec("srv", IPv4Interface(f"{SERVER}/16")),
        HostSpec("load", IPv4Interface(f"{LOAD}/16")),
        HostSpec("node", None, NODE_MAC),
    ]
    work.mkdir(parents=True, exist_ok=True)
    with LabNetwork(hosts) as lab:
        state = work / "state"
        app = Appliance(
            config=work / "provisioner.toml", state=state, http_port=8080, tftp_port=69,
            dhcp_port=67, pxe_port=4011, host=SERVER, log=work / "serve.log",
            prefix=tuple(lab.host("srv").argv([])),
        )  # fmt: skip
        make_image(state, kernel_size=4 * 1024 * 1024)
        write_config(
            app.config, interface="eth0", address=f"{SERVER}/16", mode="full", state=state,
            http_port=8080, dhcp_range="10.53.1.1-10.53.255.254",
        )  # fmt: skip
        try:
            app.start()
            yield Segment(lab, app, work)
        finally:
            app.stop()


# -- item 3: mutated packets during a boot ---------------------------------------------


@dataclass
class FuzzReport:
    sent: dict[str, int]
    seconds: float
    received: dict[str, float]  # per port (DHCP ports from serve, 69 from the TFTP service)
    outcomes: dict[str, float]  # serve's counters: each reason and reply, delta
    kernel_drops: int  # RcvbufErrors + InErrors in srv, delta
    boot_seconds: float
    baseline_seconds: float
    run: NodeRun
    alive: bool
    tracebacks: int
    unaccounted: dict[str, float] = field(default_factory=dict)


def _delta(after: dict[str, float], before: dict[str, float], prefix: str) -> dict[str, float]:
    return {
        k: after[k] - before.get(k, 0.0)
        for k in after
        if k.startswith(prefix) and after[k] - before.get(k, 0.0)
    }


def fuzz_during_boot(seg: Segment, count: int, rate: float, seed: int = 1) -> FuzzReport:
    baseline, _ = seg.boot()
    before, udp_before = seg.metrics(), seg.udp()
    argv = [sys.executable, "-m", "provisioner.lab.packetfuzz", "--target", SERVER,
            "--count", str(count), "--rate", str(rate), "--seed", str(seed)]  # fmt: skip
    fuzzer = seg.load.popen(argv, stdout=subprocess.PIPE)
    time.sleep(min(1.0, count / rate / 4))  # the boot starts inside the storm
    seconds, run = seg.boot()
    out, _ = fuzzer.communicate(timeout=count / rate * 4 + 120)
    sent = json.loads(out)
    settled: dict[str, float] = {}
    for _ in range(100):  # serve reads what is queued in its socket buffers
        time.sleep(0.2)
        now = seg.metrics()
        if now == settled:
            break
        settled = now
    after, udp_after = settled, seg.udp()
    kernel = sum(udp_after[k] - udp_before[k] for k in ("RcvbufErrors", "InErrors"))
    outcomes = {
        **_delta(after, before, "provisioner_dhcp_dropped_total"),
        **_delta(after, before, "provisioner_dhcp_replies_total"),
        **_delta(after, before, "provisioner_dhcp_quiet_total"),
        **_delta(after, before, "provisioner_tftp_dropped_total"),
        **_delta(after, before, "provisioner_tftp_requests_total"),
    }
    received = {
        port: after.get(f'provisioner_dhcp_packets_total{{port="{port}"}}', 0.0)
        - before.get(f'provisioner_dhcp_packets_total{{port="{port}"}}', 0.0)
        for port in ("67", "4011")
    }
    tftp_in = ("requests_total", 'dropped_total{reason="malformed"}',
               'dropped_total{reason="busy"}', 'dropped_total{reason="stray"}')  # fmt: skip
    received["69"] = sum(
        after.get(f"provisioner_tftp_{k}", 0.0) - before.get(f"provisioner_tftp_{k}", 0.0)
        for k in tftp_in
    )
    dhcp_out = sum(
        v
        for k, v in outcomes.items()
        if k.startswith(
            ("provisioner_dhcp_dropped", "provisioner_dhcp_replies", "provisioner_dhcp_quiet")
        )
    )
    log = seg.app.log.read_text(errors="replace")
    return FuzzReport(
        sent={k: int(v) for k, v in sent.items() if k != "seconds"},
        seconds=float(sent["seconds"]),
        received=received,
        outcomes=outcomes,
        kernel_drops=kernel,
        boot_seconds=seconds,
        baseline_seconds=baseline,
        run=run,
        alive=seg.alive(),
        tracebacks=log.count("Traceback"),
        unaccounted={"dhcp": received["67"] + received["4011"] - dhcp_out},
    )


# -- item 4: slow HTTP clients and stalled TFTP transfers during a boot ------------------


@dataclass
class StarveReport:
    baseline_seconds: list[float]
    starved_seconds: list[float]
    runs: list[NodeRun]
    load: dict[str, int]
    alive: bool


def starve_during_boot(
    seg: Segment, http_clients: int, tftp_stalls: int, rounds: int = 1
) -> StarveReport:
    """Per round: a boot with no load, then one while the slow clients hold on."""
    baseline: list[float] = []
    starved: list[float] = []
    runs: list[NodeRun] = []
    load: dict[str, int] = {}
    for _ in range(rounds):
        seconds, run = seg.boot()
        baseline.append(seconds)
        runs.append(run)
        argv = [sys.executable, "-m", "tests.integration.slow_clients", SERVER, "8080",
                str(http_clients), str(tftp_stalls), "600"]  # fmt: skip
        slow = seg.load.popen(argv, stdout=subprocess.PIPE)
        try:
            assert slow.stdout is not None
            assert slow.stdout.readline().strip() == b"ready"
            seconds, run = seg.boot()
            starved.append(seconds)
            runs.append(run)
        finally:
            slow.send_signal(signal.SIGTERM)
            out, _ = slow.communicate(timeout=60)
        load = json.loads(out.decode().strip().splitlines()[-1])
    return StarveReport(baseline, starved, runs, load, seg.alive())
