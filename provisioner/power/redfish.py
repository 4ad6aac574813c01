"""Redfish: the ComputerSystem resource, over HTTPS with certificate checks by default.

One operation is one short conversation: read the service root (no authentication),
open a session (``POST`` to the root's ``Links.Sessions`` -> ``X-Auth-Token``; HTTP Basic
where the service has no session service), find the system (the URL's path, else the
only member of ``/redfish/v1/Systems``), act, and ``DELETE`` the session. Every request
has a timeout.

A one-time network boot is one ``PATCH`` of the system's ``Boot``: target ``Pxe``,
enabled ``Once`` and, when the node's boot mode is known (:mod:`.bootmode`),
``BootSourceOverrideMode`` ``UEFI`` or ``Legacy``. The mode is left out where the
system's ``BootSourceOverrideMode@Redfish.AllowableValues`` lacks it, and the ``PATCH``
is sent again without it where the BMC answers 400 to it (some BMCs do not know the
property, or will not write it): one warning says so, and the board boots in the mode
it has.

Pure choices live in functions tested without sockets: :func:`choose_reset_type` (from
the system's ``ResetType@Redfish.AllowableValues``), :func:`boot_override`,
:func:`override_mode`, :func:`mode_remark`, :func:`power_state_of`, :func:`pick_system`.
The HTTP is behind :class:`Transport`, whose real implementation :class:`HttpTransport`
uses the standard library's ``http.client`` (no third-party HTTP stack in the appliance
for six requests).
"""

from __future__ import annotations

import base64
import http.client
import json
import logging
import socket
import ssl
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from provisioner.power.base import (
    BmcAuthError,
    BmcUnreachable,
    Operation,
    PowerError,
    PowerState,
    UnsupportedOperation,
)
from provisioner.power.bootmode import BootMode, BootModeChoice, decide_boot_mode
from provisioner.power.credentials import Secret
from provisioner.power.settings import HTTP_PORT, HTTPS_PORT, PowerSettings

log = logging.getLogger(__name__)

ROOT = "/redfish/v1/"
SYSTEMS = "/redfish/v1/Systems"
Json = dict[str, object]

# Reset types to ask for, in order of preference, for each operation.
RESET_PREFERENCE: Mapping[Operation, tuple[str, ...]] = {
    Operation.ON: ("On", "ForceOn"),
    Operation.OFF: ("ForceOff", "GracefulShutdown"),
    Operation.CYCLE: ("ForceRestart", "PowerCycle", "GracefulRestart"),
}
_STATES = {"On": PowerState.ON, "PoweringOn": PowerState.ON, "Off": PowerState.OFF}
_STATES["PoweringOff"] = PowerState.OFF
# Our boot modes in Redfish's words (ComputerSystem.BootSourceOverrideMode).
REDFISH_MODES: Mapping[BootMode, str] = {BootMode.UEFI: "UEFI", BootMode.LEGACY: "Legacy"}
MODE_PROPERTY = "BootSourceOverrideMode"


@dataclass(frozen=True)
class Response:
    status: int
    headers: Mapping[str, str] = field(default_factory=dict)  # lower-case names
    body: bytes = b""

    def json(self) -> Json:
        try:
            data = json.loads(self.body or b"{}")
        except ValueError as exc:
            raise PowerError(
                f"Redfish answered {self.status} with a body that is not JSON"
            ) from exc
        if not isinstance(data, dict):
            raise PowerError(f"Redfish answered {self.status} with JSON that is not an object")
        return data


class Transport(Protocol):
    """Sends one HTTP request to the BMC; raises PowerError subclasses on failure."""

    def request(
        self, method: str, path: str, headers: Mapping[str, str], body: bytes | None
    ) -> Response: ...


# ---------------------------------------------------------------- pure choices


def choose_reset_type(allowed: Sequence[str] | None, op: Operation) -> str:
    """The ResetType for ``op`` among the system's allowable values (None: unknown)."""
    preferred = RESET_PREFERENCE[op]
    if not allowed:
        return preferred[0]
    for choice in preferred:
        if choice in allowed:
            return choice
    raise UnsupportedOperation(
        f"the system allows ResetType {', '.join(allowed)}; none of {', '.join(preferred)}"
    )


def boot_override(mode: str | None = None) -> Json:
    """The PATCH body that makes the next boot (once) a network boot, in ``mode`` if given."""
    boot: Json = {"BootSourceOverrideTarget": "Pxe", "BootSourceOverrideEnabled": "Once"}
    if mode is not None:
        boot[MODE_PROPERTY] = mode
    return {"Boot": boot}


def override_mode(mode: BootMode | None, system: Mapping[str, object]) -> tuple[str | None, str]:
    """(the BootSourceOverrideMode to send or None, why), from the system's ``Boot``."""
    if mode is None:
        return None, "no boot mode to ask for"
    value = REDFISH_MODES[mode]
    boot = system.get("Boot")
    allowed = (
        boot.get(f"{MODE_PROPERTY}@Redfish.AllowableValues") if isinstance(boot, dict) else None
    )
    if isinstance(allowed, list) and value not in allowed:
        offered = ", ".join(str(a) for a in allowed) or "nothing"
        return None, f"the system allows {MODE_PROPERTY} {offered}, not {value}"
    return value, f"{MODE_PROPERTY} {value}"


def mode_remark(answer: Response) -> str | None:
    """What the BMC's answer says about BootSourceOverrideMode (a 400's reason, or a
    warning that came with a 2xx), or None when it says nothing about it."""
    try:
        body = answer.json()
    except PowerError:
        return None
    error = body.get("error")
    entries: list[object] = []
    for holder in (error if isinstance(error, dict) else {}, body):
        found = holder.get("@Message.ExtendedInfo")
        entries += found if isinstance(found, list) else []
    for entry in entries:
        if not isinstance(entry, dict) or str(entry.get("MessageId")).endswith(".Success"):
            continue
        if MODE_PROPERTY in json.dumps(entry):
            return str(entry.get("Message") or entry.get("MessageId") or MODE_PROPERTY)
    return None


def power_state_of(system: Mapping[str, object]) -> PowerState:
    return _STATES.get(str(system.get("PowerState")), PowerState.UNKNOWN)


def pick_system(collection: Mapping[str, object]) -> str:
    """The path of the only system in a Systems collection (several: name one)."""
    members = collection.get("Members")
    members = members if isinstance(members, list) else []
    paths = [str(m["@odata.id"]) for m in members if isinstance(m, dict) and "@odata.id" in m]
    if len(paths) == 1:
        return paths[0]
    if not paths:
        raise PowerError("the BMC lists no system under /redfish/v1/Systems")
    raise PowerError(
        f"the BMC has {len(paths)} systems ({', '.join(paths)}): put one in the power URL"
    )


def reset_action(system: Mapping[str, object]) -> tuple[str, list[str] | None, str | None]:
    """(target, allowable reset types or None, ActionInfo path or None) of a system."""
    actions = system.get("Actions")
    action = actions.get("#ComputerSystem.Reset") if isinstance(actions, dict) else None
    if not isinstance(action, dict) or "target" not in action:
        raise UnsupportedOperation("the system offers no ComputerSystem.Reset action")
    allowed = action.get("ResetType@Redfish.AllowableValues")
    info = action.get("@Redfish.ActionInfo")
    return (
        str(action["target"]),
        [str(a) for a in allowed] if isinstance(allowed, list) else None,
        str(info) if info else None,
    )


def allowed_from_action_info(info: Mapping[str, object]) -> list[str] | None:
    params = info.get("Parameters")
    for param in params if isinstance(params, list) else []:
        if isinstance(param, dict) and param.get("Name") == "ResetType":
            values = param.get("AllowableValues")
            return [str(v) for v in values] if isinstance(values, list) else None
    return None


def sessions_path(root: Mapping[str, object]) -> str | None:
    links = root.get("Links")
    sessions = links.get("Sessions") if isinstance(links, dict) else None
    if isinstance(sessions, dict) and sessions.get("@odata.id"):
        return str(sessions["@odata.id"])
    return None


# ---------------------------------------------------------------- the HTTP edge


class HttpTransport:
    """http.client, one connection per request, a timeout on each, TLS checked by default."""

    def __init__(self, settings: PowerSettings, timeout: float):
        self.host = str(settings.host)
        self.tls = not settings.plain_http
        self.port = settings.port or (HTTPS_PORT if self.tls else HTTP_PORT)
        self.timeout = timeout
        self.context: ssl.SSLContext | None = None
        if self.tls:
            self.context = ssl.create_default_context()
            if not settings.verify_tls:  # the URL said ?verify=no
                self.context.check_hostname = False
                self.context.verify_mode = ssl.CERT_NONE

    def request(
        self, method: str, path: str, headers: Mapping[str, str], body: bytes | None
    ) -> Response:
        conn: http.client.HTTPConnection
        if self.context is not None:
            conn = http.client.HTTPSConnection(
                self.host, self.port, timeout=self.timeout, context=self.context
            )
        else:
            conn = http.client.HTTPConnection(self.host, self.port, timeout=self.timeout)
        try:
            conn.request(method, path, body=body, headers=dict(headers))
            answer = conn.getresponse()
            data = answer.read()
            return Response(answer.status, {k.lower(): v for k, v in answer.getheaders()}, data)
        except ssl.SSLCertVerificationError as exc:
            raise PowerError(
                f"TLS certificate check failed ({exc.verify_message}); "
                "add ?verify=no to the power URL only if you trust this network"
            ) from exc
        except TimeoutError as exc:
            raise BmcUnreachable(
                f"no answer from {self.host}:{self.port} in {self.timeout:.0f} s"
            ) from exc
        except ConnectionRefusedError as exc:
            raise BmcUnreachable(f"connection refused by {self.host}:{self.port}") from exc
        except socket.gaierror as exc:
            raise BmcUnreachable(f"BMC host name {self.host} does not resolve") from exc
        except OSError as exc:
            raise BmcUnreachable(
                f"cannot reach {self.host}:{self.port}: {exc.strerror or exc}"
            ) from exc
        except http.client.HTTPException as exc:
            raise PowerError(f"{self.host}:{self.port} does not speak HTTP: {exc!r}") from exc
        finally:
            conn.close()


# ---------------------------------------------------------------- the driver


class RedfishDriver:
    kind = "redfish"

    def __init__(
        self,
        settings: PowerSettings,
        password: Secret,
        *,
        timeout: float,
        transport: Transport | None = None,
        node: str | None = None,
        boot_mode: BootModeChoice | None = None,
    ):
        self.settings = settings
        self._password = password
        self.transport = transport or HttpTransport(settings, timeout)
        self.node = node or settings.target
        self.boot_mode = boot_mode or decide_boot_mode(settings.boot_mode, None)
        self._auth: dict[str, str] = {}
        self._session: str | None = None

    # -- session ---------------------------------------------------------------

    def _call(self, method: str, path: str, body: Json | None = None, **extra: str) -> Response:
        answer = self._send(method, path, body, **extra)
        if answer.status >= 400:
            raise _failed(method, path, answer)
        return answer

    def _send(self, method: str, path: str, body: Json | None = None, **extra: str) -> Response:
        """One request; only a refused login raises (the caller reads other statuses)."""
        headers = {"Accept": "application/json", "OData-Version": "4.0", **self._auth, **extra}
        data = None
        if body is not None:
            headers["Content-Type"] = "application/json"
            data = json.dumps(body).encode()
        answer = self.transport.request(method, path, headers, data)
        if answer.status in (401, 403):
            raise BmcAuthError(_refused(self.settings.user, answer.status))
        return answer

    def _login(self) -> None:
        root = self._call("GET", ROOT).json()
        user, password = self.settings.user or "", self._password.reveal()
        path = sessions_path(root)
        if path is not None:
            answer = self.transport.request(
                "POST",
                path,
                {"Content-Type": "application/json", "Accept": "application/json"},
                json.dumps({"UserName": user, "Password": password}).encode(),
            )
            token = answer.headers.get("x-auth-token")
            if answer.status in (401, 403) or (answer.status == 400 and not token):
                raise BmcAuthError(_refused(user, answer.status))
            if answer.status < 300 and token:
                self._auth = {"X-Auth-Token": token}
                self._session = (
                    answer.headers.get("location")
                    or str(answer.json().get("@odata.id") or "")
                    or None
                )
                return
            log.debug(
                "bmc=%s: no session (%d), using Basic auth", self.settings.target, answer.status
            )
        pair = base64.b64encode(f"{user}:{password}".encode()).decode()
        self._auth = {"Authorization": f"Basic {pair}"}

    def _logout(self) -> None:
        session, self._session = self._session, None
        if session:
            try:
                self._call("DELETE", _path_of(session))
            except PowerError as exc:  # the session times out on its own
                log.debug("bmc=%s: closing the session failed: %s", self.settings.target, exc)
        self._auth = {}

    def _system_path(self) -> str:
        if self.settings.path:
            return self.settings.path
        return pick_system(self._call("GET", SYSTEMS).json())

    def _with_system(self) -> tuple[str, Json, str | None]:
        path = self._system_path()
        answer = self._call("GET", path)
        return path, answer.json(), answer.headers.get("etag")

    # -- operations ------------------------------------------------------------

    def _session_do(self, op: Operation) -> PowerState | None:
        self._login()
        try:
            path, system, etag = self._with_system()
            state = power_state_of(system)
            if op is Operation.STATUS:
                return state
            if op is Operation.BOOT_NEXT_NETWORK:
                self._boot_next_network(path, system, etag)
                return None
            if op is Operation.CYCLE and state is PowerState.OFF:
                op = Operation.ON
            if (op is Operation.ON and state is PowerState.ON) or (
                op is Operation.OFF and state is PowerState.OFF
            ):
                return None
            target, allowed, info = reset_action(system)
            if allowed is None and info:
                allowed = allowed_from_action_info(self._call("GET", _path_of(info)).json())
            self._call("POST", _path_of(target), {"ResetType": choose_reset_type(allowed, op)})
            return None
        finally:
            self._logout()

    def _boot_next_network(self, path: str, system: Json, etag: str | None) -> None:
        extra = {"If-Match": etag} if etag else {}
        choice = self.boot_mode
        value, why = override_mode(choice.mode, system)
        where = f"node={self.node} bmc={self.settings.target}"
        if choice.mode is None:
            log.info("%s: network boot once, boot mode left as is (%s)", where, choice.why)
        elif value is None:
            log.warning(
                "%s: network boot once without the %s mode (%s): %s",
                where, choice.mode, choice.why, why,
            )  # fmt: skip
        else:
            log.info("%s: network boot once in %s mode (%s)", where, choice.mode, choice.why)
        answer = self._send("PATCH", path, boot_override(value), **extra)
        if value is not None and answer.status == 400:
            refused = mode_remark(answer) or f"HTTP 400{_message(answer)}"
            self._call("PATCH", path, boot_override(), **extra)
            log.warning(
                "%s: the BMC refused %s=%s (%s); the next boot is from the network once, "
                "in the mode the board has",
                where, MODE_PROPERTY, value, refused,
            )  # fmt: skip
            return
        if answer.status >= 400:
            raise _failed("PATCH", path, answer)
        remark = mode_remark(answer) if value is not None else None
        if remark is not None:
            log.warning(
                "%s: the BMC took the request but said of %s: %s", where, MODE_PROPERTY, remark
            )

    def status(self) -> PowerState:
        state = self._session_do(Operation.STATUS)
        assert state is not None
        return state

    def on(self) -> None:
        self._session_do(Operation.ON)

    def off(self) -> None:
        self._session_do(Operation.OFF)

    def cycle(self) -> None:
        self._session_do(Operation.CYCLE)

    def boot_next_network(self) -> None:
        self._session_do(Operation.BOOT_NEXT_NETWORK)

    def boot_override_target(self) -> str | None:
        """The system's BootSourceOverrideTarget now (what boot_next_network set)."""
        self._login()
        try:
            boot = self._with_system()[1].get("Boot")
            return str(boot.get("BootSourceOverrideTarget")) if isinstance(boot, dict) else None
        finally:
            self._logout()


def _path_of(link: str) -> str:
    """A link from the BMC as a path (some BMCs answer with absolute URLs)."""
    if "://" in link:
        link = "/" + link.split("://", 1)[1].split("/", 1)[1]
    return link


def _failed(method: str, path: str, answer: Response) -> PowerError:
    return PowerError(f"{method} {path}: HTTP {answer.status}{_message(answer)}")


def _message(answer: Response) -> str:
    try:
        error = answer.json().get("error")
    except PowerError:
        return ""
    if isinstance(error, dict):
        extended = error.get("@Message.ExtendedInfo")
        if isinstance(extended, list) and extended and isinstance(extended[0], dict):
            return f": {extended[0].get('Message')}"
        if error.get("message"):
            return f": {error.get('message')}"
    return ""


def _refused(user: str | None, status: int) -> str:
    return f"the BMC refused user {user!r} (HTTP {status}): wrong user name or password"
