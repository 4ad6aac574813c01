"""Fuzzing, the short run CI makes (issue 20, item 3): Hypothesis feeds the parsers that
read what the network and users send, and each may only answer or refuse in its own way,
never raise anything else or hang.

- the DHCP codec and policy, the TFTP request parser (tftpy's, behind our guard) and DNS
  answers (dns/zone.py): random bytes, and the seeds with bytes changed, cut or grown, each
  through its harness in fuzz_targets.py (what it checks is said there);
- pasted hardware dumps (parse_dump): random text and mixed pastes with lines shuffled.

``FUZZ_EXAMPLES`` (default 300 per test) sets the budget. The long run is coverage-guided,
the same harnesses under atheris: ``.venv/bin/python bench/fuzz_bench.py`` (10^6 a target).
"""

from __future__ import annotations

import os

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from provisioner.discovery.dumps import parse_dump
from tests.security.fuzz_targets import (
    Harness,
    dhcp_one,
    dhcp_seeds,
    dns_one,
    dns_seeds,
    make_tftp_root,
    tftp_harness,
    tftp_seeds,
)

EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "300"))
FUZZ = settings(
    max_examples=EXAMPLES, deadline=None, database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)  # fmt: skip


def mutated(seed: bytes) -> st.SearchStrategy[bytes]:
    """``seed`` with a few bytes changed, cut or grown: close enough to pass the first checks."""

    def change(edits: list[tuple[int, int]], cut: int, tail: bytes) -> bytes:
        data = bytearray(seed)
        for at, value in edits:
            data[at % len(data)] = value
        return bytes(data[: max(1, len(data) - cut)]) + tail

    return st.builds(
        change,
        st.lists(st.tuples(st.integers(0, 10**6), st.integers(0, 255)), max_size=8),
        st.integers(0, 40),
        st.binary(max_size=40),
    )


DHCP_SEEDS = dhcp_seeds()
TFTP_SEEDS = tftp_seeds()
DNS_SEEDS = dns_seeds()


@pytest.fixture(scope="module")
def tftp_one(tmp_path_factory: pytest.TempPathFactory) -> Harness:
    return tftp_harness(make_tftp_root(tmp_path_factory.mktemp("tftp")))


@FUZZ
@given(st.binary(max_size=700))
def test_dhcp_random_bytes(data: bytes) -> None:
    dhcp_one(data)


@FUZZ
@given(st.sampled_from(DHCP_SEEDS).flatmap(mutated))
def test_dhcp_mutated_requests(data: bytes) -> None:
    dhcp_one(data)


@FUZZ
@given(st.binary(max_size=600))
def test_tftp_random_bytes(tftp_one: Harness, data: bytes) -> None:
    tftp_one(data)


@FUZZ
@given(st.sampled_from(TFTP_SEEDS).flatmap(mutated))
def test_tftp_mutated_request(tftp_one: Harness, data: bytes) -> None:
    tftp_one(data)


@FUZZ
@given(st.binary(max_size=600))
def test_dns_random_bytes(data: bytes) -> None:
    dns_one(data)


@FUZZ
@given(st.sampled_from(DNS_SEEDS).flatmap(mutated))
def test_dns_mutated_query(data: bytes) -> None:
    dns_one(data)


MIXED = """$ lspci -nn | grep -i nvidia
01:00.0 VGA compatible controller [0300]: NVIDIA Corporation GA102 [10de:2204] (rev a1)
> 02:00.0 3D controller: NVIDIA Corporation Device 20b2 (rev a1)
+-----------------------------------------------------------------------------+
| NVIDIA-SMI 440.64.00    Driver Version: 440.64.00    CUDA Version: 10.2     |
|   0  Tesla V100S-PCI...  On   | 00000000:3B:00.0 Off |                    0 |
| N/A   31C    P0    37W / 250W |      0MiB / 32510MiB |      0%      Default |
[opencl:gpu:2] Intel(R) OpenCL HD Graphics, Intel(R) Graphics [0x5693] 3.0 [22.40]
  *-display
       produit: GA106 [GeForce RTX 3060 Lite Hash Rate] [10DE:2504]
       information bus: pci@0000:07:00.0
Handle 0x0001, DMI type 1, 27 bytes
System Information
\tManufacturer: Dell Inc.
processor\t: 0
model name\t: AMD EPYC 7551P
Content-Transfer-Encoding: quoted-printable
=3D=20&gt;&amp;<pre>
"""


@FUZZ
@given(st.text(max_size=400))
def test_dumps_random_text(text: str) -> None:
    result = parse_dump(text)
    assert result.format is None or result.inventory is not None


@FUZZ
@given(st.permutations(MIXED.splitlines()), st.integers(0, 40))
def test_dumps_shuffled_mixed_paste(lines: list[str], cut: int) -> None:
    text = "\n".join(lines[: len(lines) - cut % max(1, len(lines))])
    parse_dump(text)
