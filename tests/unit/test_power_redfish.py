"""Redfish's pure choices, and the session conversation against a scripted fake BMC.

The fake transport stands in for a BMC with a SessionService, which sushy-emulator (the
real peer in tests/integration/test_power_redfish.py) does not have; everything else is
checked against the emulator there.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping

import pytest

from provisioner.power import (
    BmcAuthError,
    Operation,
    PowerError,
    PowerState,
    UnsupportedOperation,
)
from provisioner.power.bootmode import BootMode, BootModeChoice, decide_boot_mode
from provisioner.power.credentials import Secret
from provisioner.power.redfish import (
    RedfishDriver,
    Response,
    allowed_from_action_info,
    boot_override,
    choose_reset_type,
    mode_remark,
    override_mode,
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
    assert boot_override("UEFI") == {
        "Boot": {
            "BootSourceOverrideTarget": "Pxe",
            "BootSourceOverrideEnabled": "Once",
            "BootSourceOverrideMode": "UEFI",
        }
    }


MODES = "BootSourceOverrideMode@Redfish.AllowableValues"


@pytest.mark.parametrize(
    ("mode", "boot", "value", "why"),
    [
        (BootMode.UEFI, {}, "UEFI", "BootSourceOverrideMode UEFI"),
        (BootMode.LEGACY, {"BootSourceOverrideMode": "UEFI"}, "Legacy", "Legacy"),
        (BootMode.UEFI, {MODES: ["Legacy", "UEFI"]}, "UEFI", "UEFI"),
        (BootMode.LEGACY, {MODES: ["UEFI"]}, None, "allows BootSourceOverrideMode UEFI, not"),
        (BootMode.UEFI, {MODES: []}, None, "allows BootSourceOverrideMode nothing, not UEFI"),
        (None, {MODES: ["UEFI"]}, None, "no boot mode to ask for"),
    ],
)
def test_override_mode(
    mode: BootMode | None, boot: dict[str, object], value: str | None, why: str
) -> None:
    found, reason = override_mode(mode, {"Boot": boot})
    assert found == value
    assert why in reason


def test_override_mode_without_a_boot_object() -> None:
    assert override_mode(BootMode.UEFI, {}) == ("UEFI", "BootSourceOverrideMode UEFI")


# what BMCs answer to a Boot PATCH (shapes from DSP0266's error response and Base registry)
UNKNOWN = {
    "error": {
        "code": "Base.1.8.GeneralError",
        "message": "A general error has occurred. See ExtendedInfo for more information.",
        "@Message.ExtendedInfo": [
            {
                "MessageId": "Base.1.8.PropertyUnknown",
                "Message": "The property BootSourceOverrideMode is not in the list of valid "
                "properties for the resource.",
                "MessageArgs": ["BootSourceOverrideMode"],
                "RelatedProperties": ["#/Boot/BootSourceOverrideMode"],
            }
        ],
    }
}
NOT_IN_LIST = {
    "error": {
        "code": "Base.1.8.GeneralError",
        "@Message.ExtendedInfo": [
            {
                "MessageId": "Base.1.8.PropertyValueNotInList",
                "MessageArgs": ["Legacy", "BootSourceOverrideMode"],
            }
        ],
    }
}
OTHER = {
    "error": {
        "@Message.ExtendedInfo": [
            {"MessageId": "Base.1.8.PropertyValueNotInList", "Message": "Pxe not allowed"}
        ]
    }
}
TAKEN_WITH_A_WARNING = {
    "@Message.ExtendedInfo": [
        {"MessageId": "Base.1.8.Success", "Message": "Successfully Completed Request"},
        {
            "MessageId": "Base.1.8.PropertyNotWritable",
            "Message": "The property BootSourceOverrideMode is a read only property.",
        },
    ]
}


@pytest.mark.parametrize(
    ("status", "body", "remark"),
    [
        (400, UNKNOWN, "The property BootSourceOverrideMode is not in the list"),
        (400, NOT_IN_LIST, "Base.1.8.PropertyValueNotInList"),
        (400, OTHER, None),
        (200, TAKEN_WITH_A_WARNING, "The property BootSourceOverrideMode is a read only"),
        (200, {"@Message.ExtendedInfo": [{"MessageId": "Base.1.8.Success"}]}, None),
        (204, None, None),
        (400, "Bad Request", None),
    ],
)
def test_mode_remark(status: int, body: object, remark: str | None) -> None:
    data = b"" if body is None else (body if isinstance(body, str) else json.dumps(body)).encode()
    found = mode_remark(Response(status, {}, data))
    assert found == remark if remark is None else (found is not None and remark in found)


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

    def __init__(
        self,
        password: str = "s3cret",
        power: str = "On",
        boot: dict[str, object] | None = None,
        refuse_mode: object = None,
    ):
        self.password = password
        self.power = power
        self.boot = boot  # the system's Boot object, if it shows one
        self.refuse_mode = refuse_mode  # the 400 body for a PATCH naming the mode
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
                **({"Boot": self.boot} if self.boot is not None else {}),
            }
            return _json(system, etag='W/"42"')
        if method == "PATCH" and self.refuse_mode is not None and isinstance(data, dict):
            boot = data.get("Boot")
            if isinstance(boot, dict) and "BootSourceOverrideMode" in boot:
                refusal = self.refuse_mode
                text = refusal.encode() if isinstance(refusal, str) else _dump(refusal)
                return Response(400, {}, text)
        if method in ("POST", "PATCH") and path.startswith("/redfish/v1/Systems/1"):
            return Response(204)
        return Response(404)


def _dump(data: object) -> bytes:
    return json.dumps(data).encode()


def _json(data: object, etag: str | None = None) -> Response:
    headers = {"content-type": "application/json", **({"etag": etag} if etag else {})}
    return Response(200, headers, json.dumps(data).encode())


def _driver(
    bmc: FakeBmc,
    password: str = "s3cret",
    url: str = "redfish://admin@bmc",
    node: str | None = None,
    boot_mode: BootModeChoice | None = None,
) -> RedfishDriver:
    settings = parse_power_url(url)
    return RedfishDriver(
        settings, Secret(password), timeout=5, transport=bmc, node=node, boot_mode=boot_mode
    )


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


def _patches(bmc: FakeBmc) -> list[object]:
    return [c[3] for c in bmc.calls if c[0] == "PATCH"]


@pytest.mark.parametrize(
    ("firmware", "url", "mode"),
    [
        ("uefi", "redfish://admin@bmc", "UEFI"),
        ("bios", "redfish://admin@bmc", "Legacy"),
        ("bios", "redfish://admin@bmc?boot_mode=uefi", "UEFI"),
        (None, "redfish://admin@bmc?boot_mode=legacy", "Legacy"),
    ],
)
def test_boot_next_network_names_the_mode(firmware: str | None, url: str, mode: str) -> None:
    bmc = FakeBmc()
    settings = parse_power_url(url)
    choice = decide_boot_mode(settings.boot_mode, firmware)
    _driver(bmc, url=url, node="n1", boot_mode=choice).boot_next_network()
    assert _patches(bmc) == [boot_override(mode)]


def test_boot_next_network_without_a_known_mode_leaves_it(caplog: pytest.LogCaptureFixture) -> None:
    bmc = FakeBmc()
    with caplog.at_level(logging.INFO, "provisioner.power.redfish"):
        _driver(bmc, node="n1", boot_mode=decide_boot_mode(None, None)).boot_next_network()
    assert _patches(bmc) == [boot_override()]
    assert "node=n1 bmc=bmc: network boot once, boot mode left as is" in caplog.text
    assert "no firmware seen yet" in caplog.text


@pytest.mark.parametrize("refusal", [UNKNOWN, NOT_IN_LIST, "Bad Request"])
def test_a_refused_mode_is_dropped_with_one_warning(
    refusal: object, caplog: pytest.LogCaptureFixture
) -> None:
    bmc = FakeBmc(refuse_mode=refusal)
    url = "redfish://admin@bmc?boot_mode=uefi"
    with caplog.at_level(logging.INFO, "provisioner.power.redfish"):
        _driver(bmc, url=url, node="n1").boot_next_network()
    assert _patches(bmc) == [boot_override("UEFI"), boot_override()]
    patches = [c for c in bmc.calls if c[0] == "PATCH"]
    assert all(c[2]["If-Match"] == 'W/"42"' for c in patches)
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "the BMC refused BootSourceOverrideMode=UEFI" in warnings[0].getMessage()
    assert "node=n1" in warnings[0].getMessage()
    assert bmc.sessions == set()


def test_a_mode_the_system_does_not_allow_is_not_sent(caplog: pytest.LogCaptureFixture) -> None:
    bmc = FakeBmc(boot={MODES: ["UEFI"], "BootSourceOverrideMode": "UEFI"})
    with caplog.at_level(logging.INFO, "provisioner.power.redfish"):
        _driver(bmc, node="n1", boot_mode=decide_boot_mode(None, "bios")).boot_next_network()
    assert _patches(bmc) == [boot_override()]
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "without the legacy mode" in warnings[0]
    assert "allows BootSourceOverrideMode UEFI, not Legacy" in warnings[0]


def test_a_mode_the_system_allows_is_sent() -> None:
    bmc = FakeBmc(boot={MODES: ["Legacy", "UEFI"], "BootSourceOverrideMode": "Legacy"})
    _driver(bmc, boot_mode=decide_boot_mode(None, "uefi")).boot_next_network()
    assert _patches(bmc) == [boot_override("UEFI")]


def test_a_400_that_is_not_about_the_mode_still_fails() -> None:
    class Stubborn(FakeBmc):
        def request(
            self, method: str, path: str, headers: Mapping[str, str], body: bytes | None
        ) -> Response:
            answer = super().request(method, path, headers, body)
            return Response(400, {}, _dump(OTHER)) if method == "PATCH" else answer

    bmc = Stubborn()
    with pytest.raises(PowerError, match="PATCH /redfish/v1/Systems/1: HTTP 400: Pxe not allowed"):
        _driver(bmc, url="redfish://admin@bmc?boot_mode=uefi").boot_next_network()
    assert _patches(bmc) == [boot_override("UEFI"), boot_override()]
    assert bmc.sessions == set()


def test_wrong_password_is_an_auth_error_without_the_password() -> None:
    bmc = FakeBmc()
    with pytest.raises(BmcAuthError, match="refused user 'admin'") as caught:
        _driver(bmc, password="hunter2").status()
    assert "hunter2" not in str(caught.value)


def test_status_reads_power_state() -> None:
    assert _driver(FakeBmc(power="Off")).status() is PowerState.OFF
