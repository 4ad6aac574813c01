from __future__ import annotations

from ipaddress import IPv4Address as IP

from provisioner.boot.leases import LeaseTable

A, B, C = "52:54:00:00:00:0a", "52:54:00:00:00:0b", "52:54:00:00:00:0c"
START, END = IP("10.0.0.100"), IP("10.0.0.110")


def test_owner_and_holder_lookups() -> None:
    t = LeaseTable()
    t.put(IP("10.0.0.100"), A, 50.0)
    assert t.owner(IP("10.0.0.100")) == A and t.held_by(A) == IP("10.0.0.100")
    assert t.owner(IP("10.0.0.101")) is None and t.held_by(B) is None


def test_one_address_per_mac() -> None:
    t = LeaseTable()
    t.put(IP("10.0.0.100"), A, 50.0)
    t.put(IP("10.0.0.105"), A, 60.0)
    assert t.owner(IP("10.0.0.100")) is None and t.held_by(A) == IP("10.0.0.105") and len(t) == 1
    assert t.lowest_free(START, END, set()) == IP("10.0.0.100")


def test_expiry_frees_unless_renewed() -> None:
    t = LeaseTable()
    t.put(IP("10.0.0.100"), A, 50.0)
    t.put(IP("10.0.0.101"), B, 50.0)
    t.put(IP("10.0.0.101"), B, 500.0)  # renewed
    assert t.expire(100.0) == 1
    assert t.owner(IP("10.0.0.100")) is None and t.owner(IP("10.0.0.101")) == B


def test_lowest_free_skips_held_and_excluded_and_comes_back_for_freed() -> None:
    t = LeaseTable()
    for n, mac in enumerate((A, B, C)):
        t.put(IP(f"10.0.0.{100 + n}"), mac, 1e9)
    assert t.lowest_free(START, END, {IP("10.0.0.103")}) == IP("10.0.0.104")
    t.drop_mac(B)
    assert t.lowest_free(START, END, set()) == IP("10.0.0.101")


def test_pool_exhaustion() -> None:
    t = LeaseTable()
    for n in range(11):
        t.put(IP(f"10.0.0.{100 + n}"), f"52:54:00:00:01:{n:02x}", 1e9)
    assert t.lowest_free(START, END, set()) is None


def test_from_rows_ignores_expired() -> None:
    t = LeaseTable.from_rows([(IP("10.0.0.100"), A, 10.0), (IP("10.0.0.101"), B, 99.0)], now=50.0)
    assert t.owner(IP("10.0.0.100")) is None and t.owner(IP("10.0.0.101")) == B
