"""The lease table: who holds which address, in memory, with O(1) look-ups.

The DHCP policy asks three questions per packet: who holds this address, which address
does this MAC hold, and which is the lowest free address of the pool. Answering them by
scanning every lease made full mode fall to ~200 offers/s at 10,000 leases; this table
answers each in (amortised) constant time. It is pure data, no clock of its own: the
caller passes ``now`` to :meth:`expire`. The registry stays the durable copy; the DHCP
adapter loads this table from it at start and mirrors every change to both.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Container, Iterable, Mapping
from ipaddress import IPv4Address


class LeaseTable:
    def __init__(self) -> None:
        self._by_ip: dict[IPv4Address, tuple[str, float]] = {}
        self._by_mac: dict[str, IPv4Address] = {}
        self._expiries: list[tuple[float, int]] = []  # heap of (expires, ip as int)
        self._low_water = 0  # no free pool address lies below this one

    @classmethod
    def from_mapping(
        cls, leases: Mapping[IPv4Address, str], expires: float = math.inf
    ) -> LeaseTable:
        table = cls()
        for ip, mac in leases.items():
            table.put(ip, mac, expires)
        return table

    @classmethod
    def from_rows(cls, rows: Iterable[tuple[IPv4Address, str, float]], now: float) -> LeaseTable:
        table = cls()
        for ip, mac, expires in rows:
            if expires > now:
                table.put(ip, mac, expires)
        return table

    def __len__(self) -> int:
        return len(self._by_ip)

    def owner(self, ip: IPv4Address) -> str | None:
        held = self._by_ip.get(ip)
        return held[0] if held else None

    def held_by(self, mac: str) -> IPv4Address | None:
        return self._by_mac.get(mac)

    def put(self, ip: IPv4Address, mac: str, expires: float) -> None:
        """``mac`` holds ``ip`` until ``expires``; a MAC holds one address at a time."""
        old = self._by_mac.get(mac)
        if old is not None and old != ip:
            self._free(old)
        previous = self._by_ip.get(ip)
        if previous is not None and previous[0] != mac:
            self._by_mac.pop(previous[0], None)
        self._by_ip[ip] = (mac, expires)
        self._by_mac[mac] = ip
        if expires != math.inf:
            heapq.heappush(self._expiries, (expires, int(ip)))

    def drop_mac(self, mac: str) -> None:
        ip = self._by_mac.get(mac)
        if ip is not None:
            self._free(ip)

    def expire(self, now: float) -> int:
        """Forget every lease that ended at or before ``now``; returns how many."""
        count = 0
        while self._expiries and self._expiries[0][0] <= now:
            expires, value = heapq.heappop(self._expiries)
            ip = IPv4Address(value)
            held = self._by_ip.get(ip)
            if held is not None and held[1] == expires:  # not renewed since
                self._free(ip)
                count += 1
        return count

    def lowest_free(
        self, start: IPv4Address, end: IPv4Address, exclude: Container[IPv4Address]
    ) -> IPv4Address | None:
        """The lowest pool address nobody holds and not in ``exclude``."""
        first = max(int(start), self._low_water)
        for value in range(first, int(end) + 1):
            ip = IPv4Address(value)
            if ip in self._by_ip:
                continue
            if value > self._low_water:
                self._low_water = value  # everything below is held
            if ip not in exclude:
                return ip
        return None

    def _free(self, ip: IPv4Address) -> None:
        held = self._by_ip.pop(ip, None)
        if held is not None and self._by_mac.get(held[0]) == ip:
            del self._by_mac[held[0]]
        self._low_water = min(self._low_water, int(ip))
