"""Request bodies held to a size and to their sender's credentials before they are read.

:class:`BodyLimits` is a pure ASGI middleware (Starlette's ``BaseHTTPMiddleware`` would
read ahead of the app) that ``create_app`` (http.py) puts in front of every route. Each
request is held to the first :class:`BodyRule` of http.py's table that matches its
method and path, else to :data:`DEFAULT_LIMIT` with no credentials asked. In order:

1. credentials, before a byte of the body is read: ``Auth.API_TOKEN`` needs the API
   token (checked here, by the app's own check), ``Auth.BEARER`` a bearer token at all
   (its value is the route's business: the per-boot token); else 401;
2. a ``Content-Length`` over the rule's limit: 413, the body unread;
3. as the app reads the body, the bytes are counted (a chunked body declares no length):
   past the limit, 413; JSON nested deeper than :data:`MAX_JSON_DEPTH` (``json.loads``
   would die of a RecursionError: a 500), 400. Every body but ``text/plain`` (the
   agent's report) is looked at as JSON, the way the routes parse them.

On a refusal during the body the app is told the client left (``http.disconnect``), its
own answer is dropped and the refusal goes out instead. Unread bytes never reach the
app: uvicorn holds at most its flow-control buffer (64 KiB) and discards the rest once
the answer is out. A refusal is counted through ``on_refused`` and logged at debug.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from enum import Enum

from starlette.types import ASGIApp, Message, Receive, Scope, Send

log = logging.getLogger(__name__)

KIB = 1024
MIB = 1024 * KIB
DEFAULT_LIMIT = 64 * KIB  # any body no rule names: the app takes none that large
MAX_JSON_DEPTH = 128  # far below the recursion limit; inventories and chats nest < 20
API_TOKEN_REQUIRED = "a valid API bearer token is required"  # the routes' 401 says the same


class Auth(Enum):
    """What a rule asks of a request before its body is read."""

    NONE = "none"
    BEARER = "bearer"  # an Authorization: Bearer header; the route checks its value
    API_TOKEN = "api-token"  # the API token itself


@dataclass(frozen=True)
class Refusal:
    """An answer the middleware gives instead of the app."""

    status: int
    message: str
    reason: str  # provisioner_http_refused_total's label: api-token, bearer, body-size, ...
    code: str  # a machine-readable code, for error bodies that carry one (the gateway's)


def detail_body(refusal: Refusal) -> dict[str, object]:
    """FastAPI's error shape, ``{"detail": message}``: what the routes' own errors say."""
    return {"detail": refusal.message}


RenderRefusal = Callable[[Refusal], dict[str, object]]


@dataclass(frozen=True)
class BodyRule:
    """One route's limit: methods, a path template as the routes write it
    (``/api/v1/nodes/{key}``, ``{rest:path}``), the most body bytes, the credentials
    needed before reading, and the error body's shape."""

    name: str
    methods: frozenset[str]
    template: str
    limit: int
    auth: Auth = Auth.NONE
    render: RenderRefusal = detail_body
    pattern: re.Pattern[str] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "pattern", _compile(self.template))

    def matches(self, method: str, path: str) -> bool:
        return method in self.methods and self.pattern.fullmatch(path) is not None


def route(
    name: str,
    methods: str,
    template: str,
    limit: int,
    auth: Auth = Auth.NONE,
    render: RenderRefusal = detail_body,
) -> BodyRule:
    """A rule; ``methods`` space-separated, as in ``"PATCH DELETE"``."""
    return BodyRule(name, frozenset(methods.split()), template, limit, auth, render)


def _compile(template: str) -> re.Pattern[str]:
    """``/a/{x}/b/{rest:path}`` -> ``/a/[^/]+/b/.+``, as Starlette matches them."""
    parts = []
    for piece in re.split(r"(\{\w+(?::path)?\})", template):
        if piece.startswith("{"):
            parts.append(".+" if piece.endswith(":path}") else "[^/]+")
        else:
            parts.append(re.escape(piece))
    return re.compile("".join(parts))


def bearer(authorization: str | None) -> str | None:
    """The token of an ``Authorization: Bearer <token>`` header, else None."""
    if authorization and authorization.lower().startswith("bearer "):
        return authorization[7:].strip()
    return None


class JsonDepth:
    """How deep a JSON text nests, fed in pieces as they arrive; nothing is parsed.

    In C-speed passes over each piece: escapes are dropped (a trailing backslash waits
    for the next piece), then whole strings (one left open waits for its end); brackets
    are counted in what is left, and walked one by one only where they could pass the
    limit. Worst case about a parser's cost: 4 MiB of ``[]`` in 0.2 s."""

    _ESCAPE = re.compile(rb"\\.", re.DOTALL)
    _STRING = re.compile(rb'"[^"]*"')
    _NOT_BRACKETS = bytes(b for b in range(256) if b not in b"[]{}")

    def __init__(self, limit: int = MAX_JSON_DEPTH) -> None:
        self.limit = limit
        self.depth = 0
        self._in_string = False
        self._carry = b""

    def feed(self, data: bytes) -> bool:
        """Take the next piece; False once the text has nested deeper than the limit."""
        text = self._ESCAPE.sub(b"", self._carry + data)
        self._carry = b""
        if text.endswith(b"\\"):
            text, self._carry = text[:-1], b"\\"
        if self._in_string:
            end = text.find(b'"')
            if end < 0:
                return True
            text, self._in_string = text[end + 1 :], False
        text = self._STRING.sub(b"", text)
        opened = text.find(b'"')  # the one quote left opens a string this piece won't end
        if opened >= 0:
            text, self._in_string = text[:opened], True
        return self._structure(text)

    def _structure(self, text: bytes) -> bool:
        opened = text.count(b"[") + text.count(b"{")
        if self.depth + opened <= self.limit:  # cannot pass the limit: count, do not walk
            self.depth += opened - text.count(b"]") - text.count(b"}")
            return True
        for byte in text.translate(None, self._NOT_BRACKETS):
            if byte in b"[{":
                self.depth += 1
                if self.depth > self.limit:
                    return False
            else:
                self.depth -= 1
        return True


class _Body:
    """One request's body as the app reads it: bytes so far, and why it was cut off."""

    def __init__(self, limit: int, json_depth: JsonDepth | None) -> None:
        self.limit = limit
        self.size = 0
        self.json_depth = json_depth
        self.refusal: Refusal | None = None
        self.started = False  # the app's answer has begun: too late to answer ourselves

    def take(self, chunk: bytes) -> Refusal | None:
        self.size += len(chunk)
        if self.size > self.limit:
            return too_large(self.limit)
        if self.json_depth is not None and not self.json_depth.feed(chunk):
            return Refusal(
                400,
                f"the JSON body nests deeper than {self.json_depth.limit} levels",
                "json-depth",
                "json_too_deep",
            )
        return None


def too_large(limit: int) -> Refusal:
    return Refusal(413, f"the request body is over {limit} bytes", "body-size", "body_too_large")


class BodyLimits:
    """The middleware; see the module docstring. ``api_token_ok(header)`` is the app's
    API token check; ``on_refused`` is called with every refusal (the app counts them)."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        rules: Sequence[BodyRule],
        api_token_ok: Callable[[str | None], bool],
        default_limit: int = DEFAULT_LIMIT,
        on_refused: Callable[[Refusal], None] | None = None,
    ) -> None:
        self.app = app
        self.rules = tuple(rules)
        self.api_token_ok = api_token_ok
        self.default = BodyRule("default", frozenset(), "", default_limit)
        self.on_refused = on_refused

    def rule_for(self, method: str, path: str) -> BodyRule:
        return next((r for r in self.rules if r.matches(method, path)), self.default)

    def admit(self, rule: BodyRule, headers: dict[str, str]) -> Refusal | None:
        """What the head alone says: credentials first, then the declared length."""
        authorization = headers.get("authorization")
        if rule.auth is Auth.API_TOKEN and not self.api_token_ok(authorization):
            return Refusal(401, API_TOKEN_REQUIRED, "api-token", "unauthorized")
        if rule.auth is Auth.BEARER and not bearer(authorization):
            return Refusal(401, "a bearer token is required", "bearer", "unauthorized")
        declared = headers.get("content-length", "")
        if declared.isascii() and declared.isdigit() and int(declared) > rule.limit:
            return too_large(rule.limit)
        return None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        rule = self.rule_for(scope["method"], scope["path"])
        headers = _headers(scope)
        refusal = self.admit(rule, headers)
        if refusal is not None:
            await self._refuse(scope, send, rule, refusal)
            return
        json_body = not headers.get("content-type", "").startswith("text/plain")
        body = _Body(rule.limit, JsonDepth() if json_body else None)

        async def checked_receive() -> Message:
            if body.refusal is not None:
                return {"type": "http.disconnect"}
            message = await receive()
            if message["type"] == "http.request":
                body.refusal = body.take(message.get("body", b""))
                if body.refusal is not None:
                    return {"type": "http.disconnect"}
            return message

        async def checked_send(message: Message) -> None:
            if body.refusal is not None and not body.started:
                return  # the app's answer to a body we cut off: ours goes out instead
            if message["type"] == "http.response.start":
                body.started = True
            await send(message)

        try:
            await self.app(scope, checked_receive, checked_send)
        except Exception:
            if body.refusal is None or body.started:
                raise
            log.debug("the app gave up on a refused body", exc_info=True)
        if body.refusal is not None and not body.started:
            await self._refuse(scope, send, rule, body.refusal)

    async def _refuse(self, scope: Scope, send: Send, rule: BodyRule, refusal: Refusal) -> None:
        if self.on_refused is not None:
            self.on_refused(refusal)
        client = scope.get("client") or ("?", 0)
        log.debug(
            "refused %s %s from %s: %d %s (rule %s)",
            scope["method"], scope["path"], client[0], refusal.status, refusal.message, rule.name,
        )  # fmt: skip
        content = json.dumps(rule.render(refusal)).encode()
        headers = [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(content)).encode()),
        ]
        if refusal.status == 401:
            headers.append((b"www-authenticate", b"Bearer"))
        await send({"type": "http.response.start", "status": refusal.status, "headers": headers})
        await send({"type": "http.response.body", "body": content})


def _headers(scope: Scope) -> dict[str, str]:
    """The request's headers by lower-case name, the first of each name (as Starlette)."""
    found: dict[str, str] = {}
    for name, value in scope["headers"]:
        found.setdefault(name.decode("latin-1").lower(), value.decode("latin-1"))
    return found
