"""Redfish's pure choices, and the session conversation against a scripted fake BMC.

The fake transport stands in for a BMC with a SessionService, which sushy-emulator (the
real peer in tests/integration/test_power_redfish.py) does not have; everything else is
checked against the emulator there.
"""

from __future__ import annotations

import json
from collections.abc import Mapping

import pytest

from provisioner.power import (
    BmcAuthError,
    Operation,
    PowerError,
    PowerState,
    UnsupportedOperation,
)
from provisioner.power.credentials import Secret
from provisioner.power.redfish import (
    RedfishDriver,
    Response,
    allowed_from_action_info,
    boot_override,
    choose_reset_type,
    pick_system,
    power_state_of,
    reset_action,
    sessions_path,
)
from provisioner.power.settings import parse_power_url

ALL = ["On", "ForceOff", "GracefulShutdown", "GracefulRestart", "ForceRestart", "Nmi"]


@pytest.mark.parametrize(
    ("allowed", "op", "expected"),
    [
        (ALL, Operation.ON, "On"),
        (ALL, Operation.OFF, "ForceOff"),
        (ALL, Operation.CYCLE, "ForceRestart"),
        (["ForceOn", "ForceOff", "PowerCycle"], Operation.ON, "ForceOn"),
        (["ForceOn", "ForceOff", "PowerCycle"], Operation.CYCLE, "PowerCycle"),
        (["On", "GracefulShutdown", "GracefulRestart"], Operation.OFF, "GracefulShutdown"),
        (None, Operation.CYCLE, "ForceRestart"),
        ([], Operation.OFF, "ForceOff"),
    ],
)
def test_choose_reset_type(allowed: list[str] | None, op: Operation, expected: str) -> None:
    assert choose_reset_type(allowed, op) == expected


def test_choose_reset_type_refuses_when_nothing_fits() -> None:
    with pytest.raises(UnsupportedOperation, match="allows ResetType Nmi"):
        choose_reset_type(["Nmi"], Operation.OFF)


def test_boot_override_is_pxe_once() -> None:
    assert boot_override() == {
        "Boot": {"BootSourceOverrideTarget": "Pxe", "BootSourceOverrideEnabled": "Once"}
    }


@pytest.mark.parametrize(
    ("value", "state"),
    [
        ("On", PowerState.ON),
        ("PoweringOn", PowerState.ON),
        ("Off", PowerState.OFF),
        ("PoweringOff", PowerState.OFF),
        ("Paused", PowerState.UNKNOWN),
        (None, PowerState.UNKNOWN),
    ],
)
def test_power_state_of(value: str | None, state: PowerState) -> None:
    assert power_state_of({"PowerState": value} if value else {}) is state


def test_pick_system() -> None:
    one = {"Members": [{"@odata.id": "/redfish/v1/Systems/1"}]}
    assert pick_system(one) == "/redfish/v1/Systems/1"
    with pytest.raises(PowerError, match="no system"):
        pick_system({"Members": []})
    two = {"Members": [{"@odata.id": "/redfish/v1/Systems/a"}, {"@odata.id": "/s/b"}]}
    with pytest.raises(PowerError, match=r"2 systems .* put one in the power URL"):
        pick_system(two)


def test_reset_action_and_action_info() -> None:
    system = {
        "Actions": {
            "#ComputerSystem.Reset": {
                "target": "/redfish/v1/Systems/1/Actions/ComputerSystem.Reset",
                "@Redfish.ActionInfo": "/redfish/v1/Systems/1/ResetActionInfo",
            }
        }
    }
    target, allowed, info = reset_action(system)
    assert (target, allowed, info) == (
        "/redfish/v1/Systems/1/Actions/ComputerSystem.Reset",
        None,
        "/redfish/v1/Systems/1/ResetActionInfo",
    )
    info_body = {"Parameters": [{"Name": "ResetType", "AllowableValues": ["On", "ForceOff"]}]}
    assert allowed_from_action_info(info_body) == ["On", "ForceOff"]
    with pytest.raises(UnsupportedOperation):
        reset_action({"Actions": {}})


def test_sessions_path() -> None:
    assert sessions_path({"Links": {"Sessions": {"@odata.id": "/redfish/v1/S/Sessions"}}}) == (
        "/redfish/v1/S/Sessions"
    )
    assert sessions_path({"Systems": {}}) is None


# ---------------------------------------------------------------- a scripted BMC


class FakeBmc:
    """A Transport answering like a BMC with a session service (records every call)."""

    def __init__(self, password: str = "s3cret", power: str = "On"):
        self.password = password
        self.power = power
        self.calls: list[tuple[str, str, dict[str, str], object]] = []
        self.sessions: set[str] = set()

    def request(
        self, method: str, path: str, headers: Mapping[str, str], body: bytes | None
    ) -> Response:
        data = json.loads(body) if body else None
        self.calls.append((method, path, dict(headers), data))
        if path == "/redfish/v1/":
            return _json({"Links": {"Sessions": {"@odata.id": "/redfish/v1/SS/Sessions"}}})
        if method == "POST" and path == "/redfish/v1/SS/Sessions":
            assert isinstance(data, dict)
            if data["Password"] != self.password:
                return Response(401)
            self.sessions.add("tok1")
            return Response(
                201, {"x-auth-token": "tok1", "location": "https://bmc/redfish/v1/SS/Sessions/7"}
            )
        if headers.get("X-Auth-Token") not in self.sessions:
            return Response(401)
        if method == "DELETE" and path == "/redfish/v1/SS/Sessions/7":
            self.sessions.discard("tok1")
            return Response(204)
        if method == "GET" and path == "/redfish/v1/Systems":
            return _json({"Members": [{"@odata.id": "/redfish/v1/Systems/1"}]})
        if method == "GET" and path == "/redfish/v1/Systems/1":
            system = {
                "PowerState": self.power,
                "Actions": {
                    "#ComputerSystem.Reset": {
                        "target": "/redfish/v1/Systems/1/Actions/ComputerSystem.Reset",
                        "ResetType@Redfish.AllowableValues": ["On", "ForceOff", "PowerCycle"],
                    }
                },
            }
            return _json(system, etag='W/"42"')
        if method in ("POST", "PATCH") and path.startswith("/redfish/v1/Systems/1"):
            return Response(204)
        return Response(404)


def _json(data: object, etag: str | None = None) -> Response:
    headers = {"content-type": "application/json", **({"etag": etag} if etag else {})}
    return Response(200, headers, json.dumps(data).encode())


def _driver(bmc: FakeBmc, password: str = "s3cret") -> RedfishDriver:
    settings = parse_power_url("redfish://admin@bmc")
    return RedfishDriver(settings, Secret(password), timeout=5, transport=bmc)


def test_session_is_opened_used_and_deleted() -> None:
    bmc = FakeBmc(power="On")
    _driver(bmc).cycle()
    methods = [(m, p) for m, p, _, _ in bmc.calls]
    assert methods == [
        ("GET", "/redfish/v1/"),
        ("POST", "/redfish/v1/SS/Sessions"),
        ("GET", "/redfish/v1/Systems"),
        ("GET", "/redfish/v1/Systems/1"),
        ("POST", "/redfish/v1/Systems/1/Actions/ComputerSystem.Reset"),
        ("DELETE", "/redfish/v1/SS/Sessions/7"),
    ]
    assert bmc.calls[4][3] == {"ResetType": "PowerCycle"}
    assert bmc.sessions == set()
    assert all("Authorization" not in headers for _, _, headers, _ in bmc.calls)


def test_cycle_of_a_node_that_is_off_powers_it_on() -> None:
    bmc = FakeBmc(power="Off")
    _driver(bmc).cycle()
    assert [d for m, _, _, d in bmc.calls if m == "POST"][-1] == {"ResetType": "On"}


def test_on_when_on_sends_no_reset() -> None:
    bmc = FakeBmc(power="On")
    _driver(bmc).on()
    assert not any(p.endswith("ComputerSystem.Reset") for _, p, _, _ in bmc.calls)


def test_boot_next_network_patches_with_the_etag() -> None:
    bmc = FakeBmc()
    _driver(bmc).boot_next_network()
    patch = next(c for c in bmc.calls if c[0] == "PATCH")
    assert patch[3] == boot_override()
    assert patch[2]["If-Match"] == 'W/"42"'


def test_wrong_password_is_an_auth_error_without_the_password() -> None:
    bmc = FakeBmc()
    with pytest.raises(BmcAuthError, match="refused user 'admin'") as caught:
        _driver(bmc, password="hunter2").status()
    assert "hunter2" not in str(caught.value)


def test_status_reads_power_state() -> None:
    assert _driver(FakeBmc(power="Off")).status() is PowerState.OFF
