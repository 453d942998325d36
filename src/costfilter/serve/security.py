"""What stands between the network and the service, as one ASGI layer around the app:

* **trusted hosts**: a request whose ``Host`` is not on the list gets 400, so a DNS-rebinding page
  cannot make a browser talk to a service on 127.0.0.1 under a name of its own;
* **origins**: a request that carries an ``Origin`` other than the service's own (or one allowed
  with ``--cors-origin``) gets 403, so another web page cannot post into the history;
* **API keys and roles**: with keys set, every path but the page and ``/health`` needs
  ``Authorization: Bearer <key>`` (401 otherwise). A key has a name (recorded with everything
  done with it) and a role: ``operator`` (inspect, review, give verdicts) or ``admin`` (also
  apply verdicts, roll back, change thresholds: :data:`ADMIN_PATHS`; 403 for an operator). The
  request's ``(name, role)`` is in ``scope["state"]["user"]``; without keys it is
  ``("local", "admin")``, the host and origin checks being the protection;
* **upload size**: a ``POST /predict`` body is read up to the limit and refused past it (413),
  with or without a ``Content-Length``, so a chunked upload cannot fill the disk;
* ``X-Content-Type-Options: nosniff`` (and a few more headers) on every response.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import Any

Scope = dict[str, Any]
Message = dict[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

#: the host names a local service answers to unless told more
LOCAL_HOSTS = ("localhost", "127.0.0.1", "::1")
#: paths open without the API key: the page (it asks for the key) and the health check
OPEN_PATHS = ("/", "/health")
#: (method, path prefix) that need the admin role
ADMIN_PATHS = (("POST", "/versions/apply"), ("POST", "/versions/rollback"), ("POST", "/versions/activate"))
ROLES = ("operator", "admin")
#: what a key's name may be (it is written into the audit trail beside everything done with it)
KEY_NAME = r"[\w.@-]{1,64}"


def key_name_problem(name: str) -> str | None:
    """Why ``name`` cannot name a key (None: it can)."""
    if re.fullmatch(KEY_NAME, name):
        return None
    return f"name {name[:40]!r} must be 1–64 letters, digits, '.', '@', '-' or '_'"


SECURITY_HEADERS = [(b"x-content-type-options", b"nosniff"), (b"x-frame-options", b"DENY"),
                    (b"referrer-policy", b"no-referrer")]


def host_name(host: str) -> str:
    """``Host`` header → the bare host name, lower case (``[::1]:8000`` → ``::1``)."""
    host = host.strip().lower()
    if host.startswith("["):
        return host[1:].split("]", 1)[0]
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


class Guard:
    """The ASGI layer; see the module docstring."""

    def __init__(self, app: ASGIApp, *, allowed_hosts: Iterable[str] = LOCAL_HOSTS,
                 keys: Mapping[str, tuple[str, str]] | None = None, cors_origins: Iterable[str] = (),
                 max_body: int = 20_000_000):
        self.app = app
        self.hosts = {host_name(h) for h in allowed_hosts}
        #: SHA-256 (hex) of each key → (name, role); the keys themselves are not kept
        self.keys = dict(keys or {})
        self.origins = {o.rstrip("/").lower() for o in cors_origins}
        self.max_body = max_body

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        host = headers.get("host", "")
        if host_name(host) not in self.hosts:
            await _reply(send, 400, f"host {host!r} is not served here (allowed: {', '.join(sorted(self.hosts))}; "
                                    "add one with --allowed-host)")
            return
        origin = headers.get("origin", "").rstrip("/").lower()
        own = f"{scope.get('scheme', 'http')}://{host}".lower()
        if origin and origin != own and origin not in self.origins:
            await _reply(send, 403, f"requests from {origin} are not allowed (allow one with --cors-origin)")
            return
        user = ("local", "admin")
        if self.keys and scope["path"] not in OPEN_PATHS:
            # RFC 7235: the scheme is case-insensitive ("bearer", "BEARER"); the key is not.
            scheme, _, token = headers.get("authorization", "").strip().partition(" ")
            given = token.strip().encode("latin-1") if scheme.lower() == "bearer" else b""
            found = self.keys.get(hashlib.sha256(given).hexdigest()) if given else None
            if found is None:
                await _reply(send, 401, "missing or wrong API key (send Authorization: Bearer <key>)",
                             [(b"www-authenticate", b"Bearer")])
                return
            user = found
        if user[1] != "admin" and any(scope["method"] == m and scope["path"].startswith(p) for m, p in ADMIN_PATHS):
            await _reply(send, 403, f"{scope['path']} needs an admin key (this key, {user[0]!r}, is an operator's)")
            return
        scope.setdefault("state", {})["user"] = user
        if scope["path"] == "/predict" and scope["method"] == "POST":
            length = headers.get("content-length", "")
            if length.isdigit() and int(length) > self.max_body:
                await _reply(send, 413, f"upload too large: {int(length) / 1e6:.1f} MB > {self.max_body / 1e6:g} MB")
                return
            body = await _read_body(receive, self.max_body)
            if body is None:
                await _reply(send, 413, f"upload too large: more than {self.max_body / 1e6:g} MB")
                return
            receive = _replay(body, receive)

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                message = dict(message, headers=list(message.get("headers", [])) + SECURITY_HEADERS)
            await send(message)

        await self.app(scope, receive, send_with_headers)


async def _read_body(receive: Receive, limit: int) -> bytes | None:
    """The request body, or None as soon as it passes ``limit`` bytes (nothing more is read)."""
    chunks, size = [], 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            break
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)
        if not message.get("more_body", False):
            break
    return b"".join(chunks)


def _replay(body: bytes, receive: Receive) -> Receive:
    sent = False

    async def again() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()  # after the body: wait for the disconnect, as a server would

    return again


async def _reply(send: Send, status: int, detail: str, extra: list[tuple[bytes, bytes]] | None = None) -> None:
    body = json.dumps({"detail": detail}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers + SECURITY_HEADERS + (extra or [])})
    await send({"type": "http.response.body", "body": body})


def key_entry(key: str, name: str, role: str) -> tuple[str, tuple[str, str]]:
    """A key as the guard keeps it: its SHA-256 → (name, role)."""
    if role not in ROLES:
        raise ValueError(f"role must be one of {', '.join(ROLES)}, got {role!r}")
    return hashlib.sha256(key.encode("latin-1")).hexdigest(), (name, role)


def load_key_file(path: str) -> dict[str, tuple[str, str]]:
    """Keys from a YAML file: a list of ``{name, role, sha256}`` (the SHA-256 of the key, so the
    file holds no secret; ``costfilter keys new`` makes one). Bad entries are one-line errors."""
    import yaml

    from ..errors import CostfilterError

    try:
        with open(path, encoding="utf-8") as fh:
            data = yaml.safe_load(fh)
    except (OSError, yaml.YAMLError) as exc:
        raise CostfilterError(f"{path}: cannot read the key file ({str(exc).splitlines()[0]})") from None
    out: dict[str, tuple[str, str]] = {}
    for i, e in enumerate(data or []):
        if not isinstance(e, dict) or set(e) != {"name", "role", "sha256"}:
            raise CostfilterError(f"{path}: entry {i + 1}: needs exactly name, role and sha256")
        if e["role"] not in ROLES:
            raise CostfilterError(f"{path}: entry {i + 1} ({e['name']}): role must be one of {', '.join(ROLES)}")
        if not re.fullmatch(r"[0-9a-f]{64}", str(e["sha256"])):
            raise CostfilterError(f"{path}: entry {i + 1} ({e['name']}): sha256 must be 64 lower-case hex digits")
        problem = key_name_problem(str(e["name"]))
        if problem:
            raise CostfilterError(f"{path}: entry {i + 1}: {problem}")
        if e["sha256"] in out:
            raise CostfilterError(f"{path}: entry {i + 1} ({e['name']}): the same key as {out[e['sha256']][0]!r}; "
                                  "give each name and role its own key")
        out[e["sha256"]] = (str(e["name"]), str(e["role"]))
    return out
