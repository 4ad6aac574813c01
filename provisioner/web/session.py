"""Who may read the dashboard and who may act on it: logins, session cookies, CSRF tokens.

Pure, with the clock and the secret passed in, so every rule is tested without a server::

    sessions = Sessions(secret, lifetime_s=8 * 3600)
    sid = sessions.open(now)             # after a login with the key (the API token)
    sessions.valid(sid, now)             # the cookie's session: alive and known?
    token = sessions.csrf(sid)           # what each form carries; HMAC(secret, sid)
    sessions.csrf_ok(sid, form_token)    # a POST's token matches its cookie's session
    sessions.close(sid)                  # logout

A session lives in memory only: a restart of ``serve`` logs everyone out (as MAAS does
when its secret changes), and no session secret is written to disk. The cookie is
``HttpOnly`` (no script reads it), ``SameSite=Strict`` (no other site's page sends it)
and scoped to ``/``; the CSRF token is a second proof a form came from our own page, and
:func:`same_origin` refuses a POST whose ``Origin`` names another site. At most
:data:`MAX_SESSIONS` live at once; the oldest goes first.

:func:`may_read` decides reads without a login: ``[dashboard] reads`` = "cluster" lets a
browser on the cluster network or on this machine in, "open" everyone, "login" nobody.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections import OrderedDict
from ipaddress import IPv4Network, ip_address
from urllib.parse import urlsplit

COOKIE = "provisioner_session"
MAX_SESSIONS = 1024


class Sessions:
    def __init__(self, secret: bytes, lifetime_s: float, *, limit: int = MAX_SESSIONS):
        self._secret = secret
        self.lifetime_s = lifetime_s
        self.limit = limit
        self._expiry: OrderedDict[str, float] = OrderedDict()  # session id -> expires at

    def open(self, now: float) -> str:
        sid = secrets.token_urlsafe(32)
        self._expiry[sid] = now + self.lifetime_s
        while len(self._expiry) > self.limit:
            self._expiry.popitem(last=False)
        return sid

    def valid(self, sid: str | None, now: float) -> bool:
        if not sid:
            return False
        expires = self._expiry.get(sid)
        if expires is None:
            return False
        if now >= expires:
            del self._expiry[sid]
            return False
        return True

    def close(self, sid: str | None) -> None:
        if sid:
            self._expiry.pop(sid, None)

    def csrf(self, sid: str) -> str:
        return hmac.new(self._secret, b"csrf:" + sid.encode(), hashlib.sha256).hexdigest()

    def csrf_ok(self, sid: str | None, token: str | None) -> bool:
        if not sid or not token:
            return False
        return hmac.compare_digest(self.csrf(sid), token)

    def __len__(self) -> int:
        return len(self._expiry)


def key_ok(given: str | None, api_token: str) -> bool:
    """The login form's key against the appliance's API token (constant time)."""
    if not given or not api_token:
        return False
    return hmac.compare_digest(given.strip().encode(), api_token.encode())


def may_read(reads: str, client: str | None, cluster: IPv4Network) -> bool:
    """Whether a browser at ``client`` reads the dashboard without logging in."""
    if reads == "open":
        return True
    if reads != "cluster" or not client:
        return False
    try:
        address = ip_address(client)
    except ValueError:
        return False
    return address.is_loopback or (address.version == 4 and address in cluster)


def same_origin(origin: str | None, host: str | None) -> bool:
    """A POST's ``Origin`` header names the host it was sent to (no header: an older or
    same-origin form post that sends none; the CSRF token still has to match)."""
    if origin is None:
        return True
    if origin == "null" or not host:
        return False
    return urlsplit(origin).netloc.lower() == host.lower()


def cookie_header(sid: str, max_age_s: float) -> str:
    """The ``Set-Cookie`` value for a new session."""
    return f"{COOKIE}={sid}; Path=/; Max-Age={int(max_age_s)}; HttpOnly; SameSite=Strict"


def cleared_cookie() -> str:
    return f"{COOKIE}=; Path=/; Max-Age=0; HttpOnly; SameSite=Strict"
