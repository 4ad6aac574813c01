"""Many scripted PXE clients at once on one lab segment (run inside a lab namespace).

    ip netns exec PREFIX-cl python -m tests.e2e.pxe_crowd eth0 02:5e:01:00:00 24 out.jsonl

Clients ``MAC_PREFIX:01`` .. ``MAC_PREFIX:<count>`` each do what PXE firmware does with
DHCP (provisioner/lab/pxeclient.py: DISCOVER, the offers, REQUEST, ACK), a few at a time;
one JSON line per ACK (``mac``, ``ip``, ``server``) is appended to OUT. Exits 1 when a
client got no address (its error on stderr).
"""

from __future__ import annotations

import json
import sys
import threading
from concurrent.futures import ThreadPoolExecutor

from provisioner.lab.netns import LabError
from provisioner.lab.pxeclient import dhcp_exchange

BIOS = (0, "PXEClient:Arch:00000:UNDI:002001")
WORKERS = 6


def main(argv: list[str]) -> int:
    iface, prefix, count, out = argv[0], argv[1], int(argv[2]), argv[3]
    lock = threading.Lock()

    def one(index: int) -> str | None:
        mac = f"{prefix}:{index:02x}"
        try:
            ex = dhcp_exchange(iface, mac, arch=BIOS[0], vendor_class=BIOS[1],
                               timeout=30, offer_window=0.3)  # fmt: skip
        except LabError as exc:
            return f"{mac}: {exc}"
        server = ex.to_json()["server_id"]
        line = json.dumps({"mac": mac, "ip": str(ex.ack.yiaddr), "server": server})
        with lock, open(out, "a") as f:
            f.write(line + "\n")
        return None

    with ThreadPoolExecutor(WORKERS) as pool:
        failed = [e for e in pool.map(one, range(1, count + 1)) if e]
    for error in failed:
        print(error, file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
