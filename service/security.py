"""Who may call, as primitives: the API key, the console's session cookie, its CSRF token, and
the networks that may read `/metrics` without the key.

Owned by neither the API (service/api/auth.py turns these into FastAPI dependencies) nor the
console (service/web/), and used by both and by the worker's metrics server; it knows no
routes and no requests, only strings, so each rule is written once and tested without an app.

With `API_KEY` set, the console's login page exchanges the key for a signed, expiring session
cookie (HttpOnly, SameSite=Strict), which the API accepts as well as the header, so that the
browser's EventSource and image tags work. A request authenticated by the cookie alone that
changes something must also carry the session's CSRF token in `X-CSRF-Token`: the cookie is
sent by the browser on its own, the token only by the service's own pages.

The signing key is derived from the API key, so changing the key ends every session; logging
out ends one (its nonce is recorded as revoked, service/storage/revocations.py). Without a
key there is no login, but the console's writes still need a CSRF token: the console's pages
hand the browser an anonymous session signed with a secret of this process (`PROCESS_SECRET`),
so a page elsewhere, which can neither read that page nor send its SameSite cookie, cannot
make changes through the visitor's browser.

Every
secret is compared as bytes: `hmac.compare_digest` refuses `str`s with non-ASCII characters
by raising, and a header or cookie is whatever the client sends (Starlette decodes headers
as Latin-1), so comparing `str`s would turn a stray byte into a 500.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import ipaddress
import json
import secrets
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass

from service.config import Settings

COOKIE = "transfer_session"
CSRF_HEADER = "X-CSRF-Token"
# Methods that change nothing, so a cookie alone may make them (RFC 9110's safe methods).
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
# Signs the anonymous sessions of a service without API_KEY: random per process, so nothing
# outside it can forge one (a restart asks the page to be reloaded, as a rotated key does).
PROCESS_SECRET = secrets.token_bytes(32)


@dataclass(frozen=True)
class Session:
    """A console login: its random nonce (what the CSRF token is derived from) and when it
    ends, in seconds since the epoch."""

    nonce: str
    expires: int


def same_secret(given: str, expected: str) -> bool:
    """Whether two secrets are equal, in time independent of where they differ; any text,
    non-ASCII and lone surrogates included, is compared rather than refused."""
    return hmac.compare_digest(_bytes(given), _bytes(expected))


def _bytes(text: str) -> bytes:
    # surrogatepass: a lone surrogate (which UTF-8 cannot encode) still gives distinct bytes.
    return text.encode("utf-8", "surrogatepass")


def key_matches(settings: Settings, given: str) -> bool:
    """Whether `given` is the API key (which must be set)."""
    assert settings.api_key is not None
    return same_secret(given, settings.api_key)


def _key(settings: Settings) -> bytes:
    if settings.api_key is None:
        return PROCESS_SECRET
    return hashlib.sha256(f"console-session:{settings.api_key}".encode()).digest()


def _sign(settings: Settings, message: str) -> str:
    digest = hmac.new(_key(settings), _bytes(message), hashlib.sha256).digest()
    return base64.urlsafe_b64encode(digest).decode().rstrip("=")


def new_session(settings: Settings, *, now: float | None = None) -> tuple[Session, str]:
    """A fresh session and its cookie value, lasting `SESSION_SECONDS` from `now`."""
    started = time.time() if now is None else now
    session = Session(
        nonce=secrets.token_urlsafe(16), expires=int(started) + settings.session_seconds
    )
    payload = base64.urlsafe_b64encode(
        json.dumps({"n": session.nonce, "e": session.expires}).encode()
    ).decode()
    return session, f"{payload}.{_sign(settings, payload)}"


def read_session(
    settings: Settings, cookie: str | None, *, now: float | None = None
) -> Session | None:
    """The session a cookie carries, if it is this service's, unexpired at `now` and signed
    with the current key (without API_KEY: this process's secret); else None (whatever the
    cookie holds: it is the client's text). Whether it was revoked is the database's to say."""
    if not cookie or "." not in cookie:
        return None
    payload, signature = cookie.rsplit(".", 1)
    if not same_secret(signature, _sign(settings, payload)):
        return None
    try:
        fields = json.loads(base64.urlsafe_b64decode(payload))
        session = Session(nonce=str(fields["n"]), expires=int(fields["e"]))
    except (ValueError, KeyError, TypeError):
        return None
    return session if session.expires > (time.time() if now is None else now) else None


def csrf_token(settings: Settings, session: Session) -> str:
    """The token the service's own pages send with a change made under `session`."""
    return _sign(settings, f"csrf:{session.nonce}")


def csrf_matches(settings: Settings, session: Session, sent: str | None) -> bool:
    """Whether `sent` (the `X-CSRF-Token` header, None when missing) is the session's token."""
    return same_secret(sent or "", csrf_token(settings, session))


def in_open_network(settings: Settings, host: str | None) -> bool:
    """Whether a client address lies in `METRICS_OPEN_NETWORKS` (then `/metrics` asks no API
    key). A missing or unparsable address is in none."""
    if not host or not settings.metrics_open_networks:
        return False
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return False
    return any(address in network for network in settings.metrics_open_networks)


def cross_origin(origin: str | None, host: str | None, allowed: list[str]) -> bool:
    """Whether a request's `Origin` header names a page of another site than the `Host` it
    was sent to (and none of the CORS_ORIGINS). Browsers send `Origin` with every
    cross-origin write; a client that is no browser (curl, the demo) sends none: not cross."""
    if origin is None:
        return False
    if origin in allowed:
        return False
    # "null" (a sandboxed frame, a file:// page) and any garbage have no netloc: cross.
    netloc = origin.partition("://")[2].rstrip("/")
    return not netloc or host is None or netloc.lower() != host.lower()


def client_key(host: str | None) -> str:
    """Who a login attempt counts against: the address, or its /64 for IPv6 (one host holds
    a whole /64 and could otherwise rotate through it)."""
    try:
        address = ipaddress.ip_address(host or "")
    except ValueError:
        return host or ""
    if address.version == 6:
        return str(ipaddress.ip_network(f"{address}/64", strict=False))
    return str(address)


@dataclass
class _Failures:
    count: int
    last: float
    blocked_until: float


class LoginThrottle:
    """A brake on guessing the key at /login: each client may get it wrong `free` times in a
    row; after that every wrong key blocks it for twice as long as the one before (1 s, 2 s,
    4 s, … up to `longest`), and a right one clears its record. At most `clients` records are
    kept (the least recently failing dropped first), so a flood of addresses costs bounded
    memory; a record quiet for `forget` seconds is dropped too."""

    def __init__(
        self,
        *,
        free: int = 5,
        first: float = 1.0,
        longest: float = 900.0,
        forget: float = 3600.0,
        clients: int = 10_000,
    ) -> None:
        self.free, self.first, self.longest = free, first, longest
        self.forget, self.clients = forget, clients
        self._failures: OrderedDict[str, _Failures] = OrderedDict()
        # The login route runs on the thread pool: two wrong keys at once must both count.
        self._lock = threading.Lock()

    def retry_after(self, client: str, now: float | None = None) -> float:
        """Seconds before `client` may try again; 0 when it may now."""
        moment = time.monotonic() if now is None else now
        with self._lock:
            record = self._failures.get(client)
            if record is None:
                return 0.0
            if moment - record.last > self.forget:
                del self._failures[client]
                return 0.0
            return max(0.0, record.blocked_until - moment)

    def failed(self, client: str, now: float | None = None) -> None:
        moment = time.monotonic() if now is None else now
        with self._lock:
            record = self._failures.pop(client, None)
            if record is None or moment - record.last > self.forget:
                record = _Failures(count=0, last=moment, blocked_until=0.0)
            record.count += 1
            record.last = moment
            beyond = record.count - self.free
            if beyond >= 0:
                delay = min(self.longest, self.first * 2.0 ** min(beyond, 32))
                record.blocked_until = moment + delay
            self._failures[client] = record  # the newest at the end: evicted last
            while len(self._failures) > self.clients:
                self._failures.popitem(last=False)

    def succeeded(self, client: str) -> None:
        with self._lock:
            self._failures.pop(client, None)

    def __len__(self) -> int:
        return len(self._failures)
