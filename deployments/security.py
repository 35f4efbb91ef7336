"""Who may call what: Host allow-list, CORS, cross-site request refusal, API keys with scopes.

Everything here runs before a route is chosen or a body is read, so an unwelcome request costs
no spooled upload and no admission slot. Refusals use the shared envelope; a 401 also carries
`WWW-Authenticate: Bearer`.

Key verification runs in the Ingress process: the key store (the `api_key` table of the
metadata database) is opened there lazily, on one engine, and a verified key is remembered for
`security.key_cache_seconds` (5 s): a revoked key keeps working at most that long per replica.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator, Mapping
from urllib.parse import urlsplit

from fastapi import FastAPI
from fastapi.routing import APIRoute, APIRouter
from starlette.datastructures import Headers
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import cookie_parser
from starlette.routing import BaseRoute, Match, Mount, Route, Router
from starlette.types import ASGIApp, Receive, Scope, Send

from deployments.http_errors import error_response
from image_search.config import Settings
from image_search.errors import BadRequest, Forbidden, SearchEngineError, Unauthorized
from image_search.keys import MAX_KEY_CHARS, KeyStore, allows
from image_search.keys import Scope as KeyScope

logger = logging.getLogger("ray.serve")

# Each route of the API and the scope it needs; None = open to everyone. A route of ours that
# is missing here needs admin (fail closed) and tests/unit/deployments/test_security.py fails.
# FastAPI's own routes (/docs, /openapi.json) and the /static mount are not APIRoutes: open.
ROUTE_SCOPES: dict[tuple[str, str], KeyScope | None] = {
    ("GET", "/"): None,
    ("GET", "/healthz"): None,
    ("GET", "/readyz"): None,
    ("GET", "/meta/image"): "read",
    ("GET", "/meta/image/count"): "read",
    ("GET", "/meta/image/{meta_uuid}"): "read",
    ("GET", "/meta/image/{meta_uuid}/thumbnail"): "read",
    ("GET", "/files/{key:path}"): "read",
    ("GET", "/sample/meta/{meta_uuid}"): "read",
    ("GET", "/duplicates"): "read",
    ("GET", "/tags"): "read",
    ("POST", "/sample/file"): "read",  # a search: it stores nothing
    ("POST", "/meta/image/file"): "write",
    ("POST", "/meta/image/files"): "write",
    ("DELETE", "/meta/image/{meta_uuid}"): "write",
    ("DELETE", "/meta/image/images"): "admin",
}
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
# The page sets this cookie (SameSite=Strict) so that <img> thumbnails and "Open" links, which
# cannot send headers, carry the key. It is honoured for safe methods only: a state change
# always needs a header, which no other site's form or <img> can add.
KEY_COOKIE = "ise_key"
_CACHE_ENTRIES = 1024
_DEFAULT_PORTS = {"http": "80", "https": "443"}


def flat_routes(routes: Iterable[BaseRoute]) -> Iterator[BaseRoute]:
    """Routes in the order the router tries them; included routers are opened up.

    (FastAPI keeps an included APIRouter as one route that holds the router: `original_router`.)
    """
    for route in routes:
        inner = getattr(route, "original_router", None)
        if isinstance(inner, APIRouter):
            yield from flat_routes(inner.routes)
        else:
            yield route


def route_scope(routes: Iterable[BaseRoute], scope: Scope) -> KeyScope | None:
    """The scope the route that will serve this request needs, found as the router finds it.

    No route (a 404 or 405 to come) needs nothing: those answers reveal nothing.
    """
    for top in routes:
        for route in flat_routes([top]):
            match, _ = route.matches(scope)
            if match is not Match.FULL:
                continue
            if isinstance(route, APIRoute):
                key = (scope["method"], route.path)
                if key in ROUTE_SCOPES:
                    return ROUTE_SCOPES[key]
            elif isinstance(route, Mount | Route):
                return None  # FastAPI's /docs and /openapi.json, the /static files
            return _unknown(scope, route)
        if top.matches(scope)[0] is Match.FULL:
            return _unknown(scope, top)  # a router whose routes we could not see into
    return None


def _unknown(scope: Scope, route: BaseRoute) -> KeyScope:
    logger.warning("%s %s has no scope here: it needs admin", scope["method"], route)
    return "admin"  # fail closed


def _host_port(netloc: str, scheme: str = "http") -> str:
    """`host[:port]` lowercased, without the scheme's default port."""
    netloc = netloc.strip().lower()
    host, sep, port = netloc.rpartition(":")
    if sep and "]" not in port and port == _DEFAULT_PORTS.get(scheme):
        return host
    return netloc


def _host_name(netloc: str) -> str:
    """The host of a Host header, without the port (IPv6 brackets kept)."""
    netloc = netloc.strip().lower()
    if netloc.startswith("["):
        return netloc.split("]", 1)[0] + "]"
    return netloc.split(":", 1)[0]


def host_allowed(host_header: str, patterns: list[str]) -> bool:
    """Host allow-list, as Starlette's TrustedHostMiddleware reads it: exact or *.domain."""
    host = _host_name(host_header)
    for pattern in patterns:
        pattern = pattern.lower()
        if pattern == "*" or host == pattern:
            return True
        if pattern.startswith("*.") and host.endswith(pattern[1:]):
            return True
    return False


def _origin_netloc(origin: str) -> tuple[str, str] | None:
    parts = urlsplit(origin.strip())
    if parts.scheme not in _DEFAULT_PORTS or not parts.netloc:
        return None  # "null" (sandboxed frames, file://) and anything odd
    return parts.scheme, _host_port(parts.netloc, parts.scheme)


class Guard:
    """The decisions, over plain headers: testable without an app, shared by the middleware."""

    def __init__(
        self,
        settings: Settings,
        open_store: Callable[[], KeyStore] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.settings = settings
        sec = settings.security
        self.keys_required = settings.keys_required
        self.admin_token = (settings.server.admin_token or "").encode("utf-8")
        self.cache_s = sec.key_cache_seconds
        self.trusted_origins = {o for o in map(_origin_netloc, sec.cors_origins) if o}
        public = _origin_netloc(settings.server.public_url or "")
        if public:
            self.trusted_origins.add(public)
        self._open_store = open_store or (
            lambda: KeyStore(settings.stores.metadata_uri, settings.stores.connect_timeout_s)
        )
        self._store: KeyStore | None = None
        self._store_lock = threading.Lock()
        self._cache: OrderedDict[str, tuple[KeyScope, float]] = OrderedDict()
        self._clock = clock

    # -- cross-site requests --------------------------------------------------------------
    def check_origin(self, method: str, headers: Mapping[str, str]) -> None:
        """Refuse a state change that a browser says comes from another site (CSRF)."""
        if method in SAFE_METHODS:
            return
        origin = headers.get("origin")
        if origin is not None:
            parsed = _origin_netloc(origin)
            same = parsed is not None and parsed[1] == _host_port(
                headers.get("host", ""), parsed[0]
            )
            if same or parsed in self.trusted_origins:
                return
            raise Forbidden(f"cross-site request from origin {origin[:100]!r} refused")
        # No Origin: not a browser, or an old one; Sec-Fetch-Site still tells a foreign site.
        if headers.get("sec-fetch-site", "").lower() == "cross-site":
            raise Forbidden("cross-site request refused")

    # -- keys -----------------------------------------------------------------------------
    def _store_ready(self) -> KeyStore:
        with self._store_lock:
            if self._store is None:
                store = self._open_store()
                store.create_schema()  # raises StoreUnavailable: retried on the next request
                self._store = store
            return self._store

    def _verify_blocking(self, key: str) -> KeyScope | None:
        return self._store_ready().verify(key)

    async def key_scope(self, key: str) -> KeyScope | None:
        """The scope of a valid key, from the cache or the store (off the event loop)."""
        if len(key) > MAX_KEY_CHARS:
            return None  # no lookup, no hashing of megabytes
        digest = hashlib.sha256(key.encode("latin-1", "replace")).hexdigest()
        now = self._clock()
        cached = self._cache.get(digest)
        if cached is not None and cached[1] > now:
            return cached[0]
        scope = await asyncio.to_thread(self._verify_blocking, key)
        if scope is not None and self.cache_s > 0:
            self._cache[digest] = (scope, now + self.cache_s)
            self._cache.move_to_end(digest)
            while len(self._cache) > _CACHE_ENTRIES:
                self._cache.popitem(last=False)
        else:
            self._cache.pop(digest, None)
        return scope

    @staticmethod
    def presented_key(method: str, headers: Mapping[str, str]) -> str | None:
        auth = headers.get("authorization")
        if auth is not None:
            scheme, _, value = auth.strip().partition(" ")
            return value.strip() if scheme.lower() == "bearer" else ""
        if "x-api-key" in headers:
            return headers["x-api-key"].strip()
        if method in SAFE_METHODS and "cookie" in headers:
            return cookie_parser(headers["cookie"]).get(KEY_COOKIE)
        return None

    def _admin_token_ok(self, headers: Mapping[str, str]) -> bool | None:
        """None: no X-Admin-Token in play; else whether the one given is right."""
        if not self.admin_token or "x-admin-token" not in headers:
            return None
        # Header values arrive latin-1-decoded: back to their bytes, so any byte compares.
        given = headers["x-admin-token"].encode("latin-1", "replace")
        return hmac.compare_digest(given, self.admin_token)

    async def authorize(self, method: str, need: KeyScope, headers: Mapping[str, str]) -> None:
        if need == "admin":
            token_ok = self._admin_token_ok(headers)
            if token_ok is False:
                raise Unauthorized("the X-Admin-Token is not valid")
            if token_ok:
                return
            if not self.keys_required and self.admin_token:
                raise Unauthorized("this admin route needs the X-Admin-Token header")
        if not self.keys_required:
            return
        key = self.presented_key(method, headers)
        if not key:
            raise Unauthorized(
                "this route needs an API key: Authorization: Bearer <key>, or X-API-Key"
            )
        have = await self.key_scope(key)
        if have is None:
            raise Unauthorized("the API key is not valid (unknown, revoked or malformed)")
        if not allows(have, need):
            raise Forbidden(f"this route needs {need} scope; the key has {have} scope")

    def close(self) -> None:
        if self._store is not None:
            self._store.close()


class SecurityMiddleware:
    """Host allow-list, then cross-site refusal, then the route's scope; ASGI, before routing."""

    def __init__(
        self, app: ASGIApp, guard: Guard, router: Router, allowed_hosts: list[str]
    ) -> None:
        self.app = app
        self.guard = guard
        self.router = router  # the FastAPI app's: its routes, read per request, as it routes
        self.allowed_hosts = allowed_hosts

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        try:
            await self._admit(scope)
        except SearchEngineError as err:
            await self._refuse(err, scope, receive, send)
            return
        await self.app(scope, receive, send)

    async def _admit(self, scope: Scope) -> None:
        headers = Headers(scope=scope)
        method = scope["method"]
        if self.allowed_hosts and not host_allowed(headers.get("host", ""), self.allowed_hosts):
            raise BadRequest(f"host {headers.get('host', '')[:100]!r} is not served here")
        self.guard.check_origin(method, headers)
        need = route_scope(self.router.routes, scope)
        if need is not None:
            await self.guard.authorize(method, need, headers)

    @staticmethod
    async def _refuse(err: SearchEngineError, scope: Scope, receive: Receive, send: Send) -> None:
        response = error_response(err)  # StoreUnavailable (key store down) -> 503 + store
        if err.status == 401:
            response.headers["WWW-Authenticate"] = "Bearer"
        await response(scope, receive, send)


def install_security(app: FastAPI, settings: Settings, guard: Guard | None = None) -> Guard:
    """Add the security layers; call it after every other middleware so that they run first.

    Outermost first: CORS (when origins are configured), then SecurityMiddleware (Host
    allow-list, cross-site refusal, keys), then the rest of the app.
    """
    guard = guard or Guard(settings)
    sec = settings.security
    app.add_middleware(
        SecurityMiddleware, guard=guard, router=app.router, allowed_hosts=sec.allowed_hosts
    )
    if sec.cors_origins:
        # Outside the key check, so that a 401/403 to an allowed site is readable by its page.
        # No credentials mode: keys travel in headers, never in cross-site cookies.
        app.add_middleware(
            CORSMiddleware,
            allow_origins=sec.cors_origins,
            allow_methods=["GET", "POST", "DELETE"],
            allow_headers=["Authorization", "X-API-Key", "X-Admin-Token", "Content-Type"],
            allow_credentials=False,
            max_age=600,
        )
    app.state.guard = guard
    return guard
