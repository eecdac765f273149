"""The outermost layer of the service: the Host header, the API key, body size limits,
metrics, headers.

Every request passes :class:`Guard` before FastAPI sees it. A ``Host`` the server was not
told to answer to is refused first (:class:`AllowedHosts`: a page of another site that
rebinds its DNS name to this server cannot read results or reach the writes). The API
key is checked there and nowhere else (:class:`ApiKey`): writes to ``/images`` and
``POST /feedback`` are refused before their body is read. It also answers a plain
``GET /search?id=N&k=K`` itself (:meth:`Guard._fast_search`).
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import socket
import time
from collections.abc import Iterable
from typing import Any

from fastapi import HTTPException
from fastapi.responses import Response
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import MutableHeaders
from starlette.routing import Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from cbir.service.schemas import ApiError, error_response
from cbir.service.service import Service

#: Room for multipart headers and small form fields on top of the upload itself.
FORM_OVERHEAD = 64 * 1024
CSP = (
    "default-src 'self'; img-src 'self' blob: data:; style-src 'self'; script-src 'self';"
    " connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'"
)
WRITE_METHODS = ("POST", "DELETE", "PUT", "PATCH")
#: The names a loopback server answers to (``cbir serve`` on 127.0.0.1, ::1 or localhost).
LOOPBACK_HOSTS = ("localhost", "127.0.0.1", "::1")


def _digest(key: str) -> bytes:
    return hashlib.sha256(key.encode("utf-8", "surrogatepass")).digest()


def route_path(scope: Scope) -> str:
    """The request path as the router matches it (``root_path`` taken off, as Starlette does)."""
    path: str = scope["path"]
    root = scope.get("root_path", "")
    if root and path.startswith(root):
        if path == root:
            return ""
        if path[len(root)] == "/":
            return path[len(root) :]
    return path


def host_name(header: str) -> str | None:
    """The host name of a ``Host`` header value, lower-case, without port or IPv6
    brackets (``[::1]:8000`` -> ``::1``); None when it is malformed."""
    h = header.strip().lower()
    if h.startswith("["):
        end = h.find("]")
        if end < 0 or (h[end + 1 :] and not h[end + 1 :].startswith(":")):
            return None
        name, port = h[1:end], h[end + 2 :]
    else:
        name, _, port = h.partition(":")
    if not name or (port and not port.isdigit()):
        return None
    return name


def valid_host(name: str) -> bool:
    """Whether ``name`` is a host name or address without a port (``--allow-host``)."""
    n = name.strip()
    return n == "*" or _is_ip(n.strip("[]")) or (host_name(n) == n.lower() and "/" not in n)


def _is_ip(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


class AllowedHosts:
    """The ``Host`` header values a server answers to (against DNS rebinding).

    Args:
        names: host names or addresses (``*`` accepts any Host: only behind a proxy that
            checks it).
        any_ip: also accept any IP address literal (a server bound to every interface:
            rebinding needs a DNS name, and an address names the server itself).
    """

    def __init__(self, names: Iterable[str], any_ip: bool = False) -> None:
        self.names = frozenset(n.strip().strip("[]").lower() for n in names if n.strip())
        self.any = "*" in self.names
        self.any_ip = any_ip

    @classmethod
    def for_bind(cls, host: str, extra: Iterable[str] = ()) -> AllowedHosts:
        """The names a server listening on ``host`` answers to: ``host`` itself, the
        loopback names for a loopback address, any address and the machine's host name for
        ``0.0.0.0`` / ``::``; plus ``extra`` (``--allow-host``)."""
        h = host.strip().strip("[]").lower()
        names = {h, *extra}
        wildcard = h in ("", "0.0.0.0", "::")
        if h == "localhost" or (_is_ip(h) and ipaddress.ip_address(h).is_loopback):
            names |= set(LOOPBACK_HOSTS)
        if wildcard:  # every interface: loopback, any address, and this machine's name
            names |= {*LOOPBACK_HOSTS, socket.gethostname()}
        return cls(names, any_ip=wildcard)

    def allowed(self, header: str | None) -> bool:
        """Whether a request with this ``Host`` header value is answered."""
        if self.any:
            return True
        name = host_name(header or "")
        if name is None:
            return False
        return name in self.names or (self.any_ip and _is_ip(name))

    def refusal(self, header: str | None) -> ApiError:
        shown = (header or "")[:100].encode("ascii", "backslashreplace").decode()
        return ApiError(
            400,
            f"Host {shown!r} is not one this server answers to; start `cbir serve` with"
            f" --allow-host NAME to serve NAME",
            "bad-host",
        )


class ApiKey:
    """Which requests need the API key, and the constant-time comparison with it.

    Args:
        key: the configured key (None: every request that needs one is refused, 403).
    """

    def __init__(self, key: str | None) -> None:
        self._digest = _digest(key) if key else None

    @property
    def enabled(self) -> bool:
        """Whether a key is configured (writes possible at all)."""
        return self._digest is not None

    def needed(self, method: str, path: str) -> bool:
        """Whether ``method path`` needs the key: any write to ``/images`` or below it, and
        any write to ``/feedback`` (it adds rows and saves query images)."""
        if method not in WRITE_METHODS:
            return False
        return path in ("/images", "/feedback") or path.startswith("/images/")

    def check(self, given: str | None) -> None:
        """Refuse (403 without a configured key, 401 for a missing or wrong one)."""
        if self._digest is None:
            raise ApiError(
                403,
                "writes are disabled: start `cbir serve` with --api-key-file",
                "writes-disabled",
            )
        if not given:
            raise ApiError(
                401,
                "missing API key: send it in the X-API-Key header",
                "no-key",
                {"WWW-Authenticate": "ApiKey"},
            )
        if not hmac.compare_digest(_digest(given), self._digest):
            raise ApiError(401, "wrong API key", "bad-key", {"WWW-Authenticate": "ApiKey"})


def fast_search_query(qs: bytes, max_k: int) -> tuple[int, int] | None:
    """(id, k) of a plain ``id=N[&k=K]`` query (in any order, k in 1..max_k), else None.

    Anything else (a tag, other or repeated parameters, signs, k out of range) is left to
    the FastAPI route, which validates it and answers the errors.
    """
    out: dict[bytes, int] = {}
    for part in qs.split(b"&"):
        key, sep, val = part.partition(b"=")
        if not sep or key not in (b"id", b"k") or key in out or not val.isdigit() or len(val) > 18:
            return None
        out[key] = int(val)
    k = out.get(b"k", 10)
    if b"id" not in out or not 1 <= k <= max_k:
        return None
    return out[b"id"], k


def _header(scope: Scope, name: bytes) -> str | None:
    """The first value of header ``name`` (lower-case) of a request, or None."""
    for k, v in scope["headers"]:
        if k == name:
            return str(v.decode("latin-1"))
    return None


class Guard:
    """Outermost layer: the Host check, body size limit, the key check, metrics, headers.

    Args:
        app: the FastAPI app it wraps.
        service: the :class:`Service` (upload limit, metrics, the fast search path).
        routes: returns the app's routes (to name the route of a request in the metrics).
        key: the API key policy; the only place the key is checked.
        hosts: the Host header values answered (others: 400).
    """

    def __init__(
        self, app: ASGIApp, service: Service, routes: Any, key: ApiKey, hosts: AllowedHosts
    ) -> None:
        self.app = app
        self.service = service
        self.routes = routes
        self.key = key
        self.hosts = hosts
        self.max_body = service.max_upload_bytes + FORM_OVERHEAD

    def _route(self, scope: Scope) -> str:
        route = scope.get("route")
        if route is None:
            for r in self.routes():
                if r.matches(scope)[0] == Match.FULL:
                    route = r
                    break
        return getattr(route, "path", None) or "<unmatched>"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        t0 = time.perf_counter()
        status = 500
        path = scope["path"]
        csp = not (path.startswith("/docs") or path.startswith("/redoc"))

        async def send_wrapper(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                h = MutableHeaders(scope=message)
                h["X-Content-Type-Options"] = "nosniff"
                h["Referrer-Policy"] = "no-referrer"
                h["X-Frame-Options"] = "DENY"
                if csp:
                    h["Content-Security-Policy"] = CSP
            await send(message)

        received = 0

        async def receive_wrapper() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_body:
                    raise HTTPException(
                        413, f"request body larger than the limit of {self.max_body} bytes"
                    )
            return message

        route: str | None = None
        try:
            if not self.hosts.allowed(_header(scope, b"host")):
                e = self.hosts.refusal(_header(scope, b"host"))
                await error_response(e.status, e.message, e.reason)(scope, receive, send_wrapper)
                return
            if path == "/search" and scope["method"] == "GET":
                q = fast_search_query(scope.get("query_string", b""), self.service.max_k)
                if q is not None and await self._fast_search(q, send_wrapper):
                    route = "/search"
                    return
            refusal = self._refusal(scope)
            if refusal is not None:
                await refusal(scope, receive, send_wrapper)
                return
            await self.app(scope, receive_wrapper, send_wrapper)
        finally:
            self.service.metrics.observe(
                scope["method"], route or self._route(scope), status, time.perf_counter() - t0
            )

    async def _fast_search(self, q: tuple[int, int], send: Send) -> bool:
        """Answer a plain ``GET /search?id=N&k=K`` without FastAPI's routing and validation.

        The answer is the route's own (:meth:`Service.search_out`); about a third of the
        server's CPU per search went to the framework layers it skips (benchmarks/load.py).
        False, with nothing sent, when the search raised: the full route then answers, with
        its error (an unknown id, a failed read).
        """
        svc = self.service
        id_, k = q

        def run() -> bytes:
            out = svc.search_out(f"id:{id_}", svc.features_of(id_), k, None)
            return out.model_dump_json().encode()

        try:
            body = run() if svc.inline_ok() else await run_in_threadpool(run)
        except Exception:
            return False
        headers = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(body))]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": body})
        return True

    def _refusal(self, scope: Scope) -> Response | None:
        """The answer to a request refused before the app: a bad or too large body size, or
        the key missing or wrong where it is needed; None to let the request through."""
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        cl = headers.get("content-length")
        if cl is not None:
            if not cl.isdigit():
                return error_response(400, "invalid Content-Length header", "bad-request")
            if int(cl) > self.max_body:
                return error_response(
                    413,
                    f"request body of {cl} bytes is larger than the limit of {self.max_body}",
                    "too-large",
                )
        if self.key.needed(scope["method"], route_path(scope)):
            try:
                self.key.check(headers.get("x-api-key"))
            except ApiError as e:
                return error_response(e.status, e.message, e.reason, e.headers)
        return None
