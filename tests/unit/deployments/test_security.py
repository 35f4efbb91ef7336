"""Keys, scopes, cross-site requests, CORS and the Host allow-list, through the real app."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from fastapi.routing import APIRoute
from fastapi.testclient import TestClient

from deployments.security import ROUTE_SCOPES, Guard, flat_routes
from image_search.config import load_settings
from image_search.errors import Unauthorized
from image_search.keys import SCOPES, KeyStore, allows
from image_search.keys import Scope as KeyScope
from tests.unit.deployments.conftest import Service, jpeg
from tests.unit.deployments.test_routes import fails

Call = Callable[[TestClient, dict[str, str], dict[str, str]], Any]
ADMIN_TOKEN = "s3cret-token"

# One real request per route, over a service holding one image ("one"); ctx["file"] is its
# stored bytes' URL. A route missing here fails test_every_route_has_a_scope_and_a_request.
REQUESTS: dict[tuple[str, str], Call] = {
    ("GET", "/"): lambda c, x, h: c.get("/", headers=h),
    ("GET", "/healthz"): lambda c, x, h: c.get("/healthz", headers=h),
    ("GET", "/readyz"): lambda c, x, h: c.get("/readyz", headers=h),
    ("GET", "/meta/image"): lambda c, x, h: c.get("/meta/image", headers=h),
    ("GET", "/meta/image/count"): lambda c, x, h: c.get("/meta/image/count", headers=h),
    ("GET", "/meta/image/{meta_uuid}"): lambda c, x, h: c.get("/meta/image/one", headers=h),
    ("GET", "/meta/image/{meta_uuid}/thumbnail"): (
        lambda c, x, h: c.get("/meta/image/one/thumbnail", headers=h)
    ),
    ("GET", "/files/{key:path}"): lambda c, x, h: c.get(x["file"], headers=h),
    ("GET", "/sample/meta/{meta_uuid}"): lambda c, x, h: c.get("/sample/meta/one", headers=h),
    ("GET", "/duplicates"): lambda c, x, h: c.get("/duplicates", headers=h),
    ("GET", "/tags"): lambda c, x, h: c.get("/tags", headers=h),
    ("POST", "/sample/file"): (
        lambda c, x, h: c.post("/sample/file", files={"file": ("q.jpg", jpeg(1))}, headers=h)
    ),
    ("POST", "/meta/image/file"): (
        lambda c, x, h: c.post("/meta/image/file", files={"file": ("n.jpg", jpeg(2))}, headers=h)
    ),
    ("POST", "/meta/image/files"): (
        lambda c, x, h: c.post("/meta/image/files", files=[("file", ("m.jpg", jpeg(3)))], headers=h)
    ),
    ("DELETE", "/meta/image/{meta_uuid}"): lambda c, x, h: c.delete("/meta/image/one", headers=h),
    ("DELETE", "/meta/image/images"): lambda c, x, h: c.delete("/meta/image/images", headers=h),
}


class Keyed:
    """A service with keys required, a key of each scope, and one stored image."""

    def __init__(self, make_service: Callable[..., Service], tmp: Path, **overrides: Any) -> None:
        uri = f"sqlite:///{tmp}/keys.db"
        self.service = make_service(**{
            "security.require_keys": True, "stores.metadata_uri": uri,
            "security.key_cache_seconds": 0, **overrides,
        })  # fmt: skip
        self.client = self.service.client
        self.store = KeyStore(uri)
        self.store.create_schema()
        self.keys = {scope: self.store.create(f"{scope} test", scope).key for scope in SCOPES}
        r = self.client.post(
            "/meta/image/file", files={"file": ("a.jpg", jpeg(1))}, data={"meta_uuid": "one"},
            headers=self.bearer("write"),
        )  # fmt: skip
        assert r.status_code == 200, r.text
        self.ctx = {"file": r.json()["data"]["file_relative_url"]}

    def bearer(self, scope: KeyScope) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.keys[scope]}"}


@pytest.fixture
def keyed(make_service: Callable[..., Service], tmp_path: Path) -> Keyed:
    return Keyed(make_service, tmp_path)


def api_routes(service: Service) -> set[tuple[str, str]]:
    app = service.client.app
    return {
        (method, route.path)
        for route in flat_routes(app.router.routes)  # type: ignore[attr-defined]
        if isinstance(route, APIRoute)
        for method in route.methods or ()
    }


def test_every_route_has_a_scope_and_a_request(service: Service) -> None:
    """A new route must say which scope it needs (deployments/security.py) and get a case here."""
    routes = api_routes(service)
    assert routes == set(ROUTE_SCOPES), "routes and ROUTE_SCOPES differ"
    assert routes == set(REQUESTS), "routes and this test's REQUESTS differ"
    assert {k for k, v in ROUTE_SCOPES.items() if v is None} == {
        ("GET", "/"), ("GET", "/healthz"), ("GET", "/readyz")}  # fmt: skip


@pytest.mark.parametrize("route", sorted(ROUTE_SCOPES), ids=lambda r: f"{r[0]} {r[1]}")
def test_each_route_answers_401_403_or_200_by_scope(keyed: Keyed, route: tuple[str, str]) -> None:
    need = ROUTE_SCOPES[route]
    call = REQUESTS[route]
    anonymous = call(keyed.client, keyed.ctx, {})
    if need is None:
        assert anonymous.status_code == 200, anonymous.text
        return
    fails(anonymous, 401)
    assert anonymous.headers["www-authenticate"] == "Bearer"
    for have in SCOPES:
        r = call(keyed.client, keyed.ctx, keyed.bearer(have))
        if allows(have, need):
            assert r.status_code == 200, (have, r.text)
            return  # the call may have changed the data: one success per route
        body = fails(r, 403)
        assert f"needs {need} scope" in body["message"] and f"has {have}" in body["message"]


def test_a_route_without_a_scope_needs_admin(keyed: Keyed) -> None:
    """Fail closed: a route added without an entry in ROUTE_SCOPES is admin-only."""
    keyed.client.app.add_api_route("/extra", lambda: {"succeed": True, "message": "ok"})  # type: ignore[attr-defined]
    fails(keyed.client.get("/extra", headers=keyed.bearer("write")), 403)
    assert keyed.client.get("/extra", headers=keyed.bearer("admin")).status_code == 200


def test_x_api_key_header_works_too(keyed: Keyed) -> None:
    r = keyed.client.get("/meta/image/count", headers={"X-API-Key": keyed.keys["read"]})
    assert r.status_code == 200 and r.json()["image_count"] == 1


def test_docs_schema_and_static_files_stay_open(keyed: Keyed) -> None:
    for path in ("/docs", "/openapi.json", "/static/app.js", "/static/keys.js"):
        assert keyed.client.get(path).status_code == 200, path
    page = keyed.client.get("/", headers={"Accept": "text/html"})
    assert page.status_code == 200 and "key-dialog" in page.text
    fails(keyed.client.get("/no/such/route"), 404)  # unknown paths: 404, nothing to guard


def test_revoked_key_is_401(keyed: Keyed) -> None:
    key = keyed.store.create("soon gone", "read")
    assert keyed.client.get("/meta/image", headers={"X-API-Key": key.key}).status_code == 200
    keyed.store.revoke(key.info.key_id)
    body = fails(keyed.client.get("/meta/image", headers={"X-API-Key": key.key}), 401)
    assert "revoked" in body["message"]


@pytest.mark.parametrize(
    "headers",
    [
        {"Authorization": b"Bearer \xff\xfe\xe9t\xe9"},
        {"Authorization": b"Basic \xc3\xa9"},
        {"Authorization": b"Bearer"},
        {"X-API-Key": b"ise_\xff\xff\xff"},
        {"X-API-Key": "k" * 200_000},
        {"Authorization": "Bearer " + "ise_0123456789ab_" + "a" * 100_000},
        {"Cookie": b"ise_key=\xff\xfe; other=\x80"},
    ],
    ids=[
        "non-ascii-bearer",
        "basic",
        "empty-bearer",
        "non-ascii-key",
        "huge-key",
        "huge-bearer",
        "non-ascii-cookie",
    ],
)
def test_odd_header_bytes_are_401_never_500(keyed: Keyed, headers: dict[str, Any]) -> None:
    fails(keyed.client.get("/meta/image", headers=headers), 401)
    fails(keyed.client.delete("/meta/image/one", headers=headers), 401)
    assert keyed.service.svc.counts() == (1, 1)


def test_cookie_key_serves_reads_but_never_writes(keyed: Keyed) -> None:
    """The page's cookie (for <img>) is honoured for GET only: a form cannot use it."""
    keyed.client.cookies.set("ise_key", keyed.keys["admin"])
    try:
        assert keyed.client.get(keyed.ctx["file"]).status_code == 200
        assert keyed.client.get("/meta/image/one/thumbnail").status_code == 200
        fails(keyed.client.delete("/meta/image/one"), 401)
        fails(keyed.client.post("/meta/image/file", files={"file": ("b.jpg", jpeg(5))}), 401)
    finally:
        keyed.client.cookies.clear()
    assert keyed.service.svc.counts() == (1, 1)


def test_key_store_down_is_503(make_service: Callable[..., Service], tmp_path: Path) -> None:
    service = make_service(**{
        "security.require_keys": True,
        "stores.metadata_uri": f"sqlite:///{tmp_path}/no/such/dir/meta.db",
    })  # fmt: skip
    headers = {"X-API-Key": "ise_0123456789ab_" + "a" * 43}
    body = fails(service.client.get("/meta/image", headers=headers), 503)
    assert body["store"] == "metadata" and "key store" in body["message"]
    assert service.client.get("/healthz").status_code == 200


# -- the admin token (backward compatible) -------------------------------------------------
def test_admin_token_with_keys_off(make_service: Callable[..., Service]) -> None:
    service = make_service(**{"server.admin_token": ADMIN_TOKEN})
    client = service.client
    assert client.post("/meta/image/file", files={"file": ("a.jpg", jpeg(1))}).status_code == 200
    fails(client.delete("/meta/image/images"), 401)
    for wrong in ("wrong", b"\xff\xfe\xe9", "x" * 100_000, "s3cret-token "):
        fails(client.delete("/meta/image/images", headers={"X-Admin-Token": wrong}), 401)
    assert service.svc.counts() == (1, 1)
    ok = client.delete("/meta/image/images", headers={"X-Admin-Token": ADMIN_TOKEN})
    assert ok.status_code == 200 and ok.json()["deleted"] == 1


def test_admin_token_or_admin_key_with_keys_on(
    make_service: Callable[..., Service], tmp_path: Path
) -> None:
    keyed = Keyed(make_service, tmp_path, **{"server.admin_token": ADMIN_TOKEN})
    delete_all = "/meta/image/images"
    fails(keyed.client.delete(delete_all, headers={"X-Admin-Token": "wrong"}), 401)
    fails(keyed.client.delete(delete_all, headers={"X-Admin-Token": b"\xe9\xff"}), 401)
    fails(keyed.client.delete(delete_all, headers=keyed.bearer("write")), 403)
    ok = keyed.client.delete(delete_all, headers={"X-Admin-Token": ADMIN_TOKEN})
    assert ok.status_code == 200 and ok.json()["deleted"] == 1


# -- cross-site requests (CSRF) ------------------------------------------------------------
def form_post(client: TestClient, headers: dict[str, str]) -> Any:
    return client.post("/meta/image/file", files={"file": ("a.jpg", jpeg(7))}, headers=headers)


@pytest.mark.parametrize(
    "headers",
    [
        {"Origin": "https://evil.example"},
        {"Origin": "http://testserver.evil.example"},
        {"Origin": "null"},
        {"Sec-Fetch-Site": "cross-site"},
    ],
)
def test_cross_site_form_post_is_403_with_keys_off(
    service: Service, headers: dict[str, str]
) -> None:
    assert not service.settings.keys_required
    body = fails(form_post(service.client, headers), 403)
    assert "cross-site" in body["message"]
    fails(service.client.delete("/meta/image/images", headers=headers), 403)
    assert service.svc.counts() == (0, 0)


def test_cross_site_is_refused_even_with_a_valid_key(keyed: Keyed) -> None:
    headers = {"Origin": "https://evil.example", **keyed.bearer("admin")}
    fails(keyed.client.delete("/meta/image/one", headers=headers), 403)
    assert keyed.service.svc.counts() == (1, 1)


def test_same_origin_and_plain_clients_may_post(service: Service) -> None:
    client = service.client
    assert form_post(client, {"Origin": "http://testserver"}).status_code == 200
    r = client.post(
        "/meta/image/file",
        files={"file": ("b.jpg", jpeg(8))},
        headers={"Origin": "http://TESTSERVER:80", "Sec-Fetch-Site": "same-origin"},
    )
    assert r.status_code == 200
    # curl, the CLI, scripts: no Origin, no Sec-Fetch-Site.
    assert client.post("/sample/file", files={"file": ("q.jpg", jpeg(7))}).status_code == 200
    # Reads from anywhere are not state changes (and the browser hides the answer: no CORS).
    assert client.get("/meta/image", headers={"Origin": "https://evil.example"}).status_code == 200


# -- CORS ----------------------------------------------------------------------------------
PREFLIGHT = {"Access-Control-Request-Method": "POST",
             "Access-Control-Request-Headers": "authorization"}  # fmt: skip


def test_cors_is_off_by_default(service: Service) -> None:
    r = service.client.options(
        "/sample/file", headers={"Origin": "https://app.example", **PREFLIGHT}
    )
    assert r.status_code >= 400 and "access-control-allow-origin" not in r.headers
    fails(form_post(service.client, {"Origin": "https://app.example"}), 403)


def test_configured_origin_gets_cors_and_may_post(
    make_service: Callable[..., Service], tmp_path: Path
) -> None:
    keyed = Keyed(make_service, tmp_path, **{"security.cors_origins": ["https://app.example"]})
    client = keyed.client
    ok = client.options("/sample/file", headers={"Origin": "https://app.example", **PREFLIGHT})
    assert ok.status_code == 200
    assert ok.headers["access-control-allow-origin"] == "https://app.example"
    assert "authorization" in ok.headers["access-control-allow-headers"].lower()
    other = client.options("/sample/file", headers={"Origin": "https://evil.example", **PREFLIGHT})
    assert "access-control-allow-origin" not in other.headers
    origin = {"Origin": "https://app.example"}
    posted = form_post(client, {**origin, **keyed.bearer("write")})
    assert posted.status_code == 200
    assert posted.headers["access-control-allow-origin"] == "https://app.example"
    # The allowed site's page can read why it was refused.
    refused = fails(client.get("/meta/image", headers=origin), 401)
    assert refused.get("succeed") is False
    assert client.get("/meta/image", headers=origin).headers["access-control-allow-origin"]


# -- Host allow-list -----------------------------------------------------------------------
def test_host_allow_list(make_service: Callable[..., Service]) -> None:
    hosts = ["search.example.com", "*.internal.example"]
    client = make_service(**{"security.allowed_hosts": hosts}).client
    body = fails(client.get("/healthz"), 400)  # TestClient's Host is "testserver"
    assert "testserver" in body["message"]
    for host in ("search.example.com", "SEARCH.example.com:8000", "a.internal.example"):
        assert client.get("/healthz", headers={"Host": host}).status_code == 200, host
    for host in ("evil.example", "search.example.com.evil.example", "internal.example.evil"):
        fails(client.get("/healthz", headers={"Host": host}), 400)
    assert make_service().client.get("/healthz").status_code == 200  # empty list: any host


# -- the verification cache ----------------------------------------------------------------
def test_verified_keys_are_cached_for_the_configured_seconds(tmp_path: Path) -> None:
    uri = f"sqlite:///{tmp_path}/keys.db"
    store = KeyStore(uri)
    store.create_schema()
    new = store.create("cached", "write")
    lookups: list[str] = []

    class CountingStore(KeyStore):
        def verify(self, presented: str) -> Any:
            lookups.append(presented)
            return super().verify(presented)

    now = [100.0]
    settings = load_settings(environ={}, overrides={
        "stores.metadata_uri": uri, "security.require_keys": True,
        "security.key_cache_seconds": 5})  # fmt: skip
    guard = Guard(settings, open_store=lambda: CountingStore(uri), clock=lambda: now[0])
    headers = {"x-api-key": new.key}

    def authorize(need: KeyScope) -> None:
        asyncio.run(guard.authorize("GET", need, headers))

    authorize("write")
    authorize("read")
    assert len(lookups) == 1  # the second call came from the cache
    store.revoke(new.info.key_id)
    now[0] += 4.9
    authorize("write")  # still cached: this is the revocation delay
    now[0] += 0.2
    with pytest.raises(Unauthorized, match="revoked"):
        authorize("write")
    assert len(lookups) == 2
    guard.close()
