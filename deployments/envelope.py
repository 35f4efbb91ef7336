"""The envelope every answer shares, errors included: {"succeed", "message", ...}.

Kept apart from the response shaping (responses.py) and light to import: Serve's HTTP proxy
imports it through deployments.admission, and must not import the store clients (pymilvus
reconfigures logging on import, which closes the proxy's own log handlers).
"""

from __future__ import annotations

from typing import Any, Literal

from fastapi.responses import JSONResponse
from pydantic import BaseModel

from image_search.errors import Overloaded, SearchEngineError, StoreUnavailable


class ErrorEnvelope(BaseModel):
    """Every error's body: the original's envelope (store: which store is down, on 503)."""

    succeed: Literal[False]
    message: str
    store: str | None = None


# Documented on every route, so clients (and the OpenAPI fuzz test) know each error's shape.
ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorEnvelope, "description": why}
    for code, why in (
        (400, "Invalid parameters or image"),
        (401, "A valid API key is needed"),
        (403, "The key's scope or the request's origin is not allowed"),
        (404, "No such image or file"),
        (408, "The request body stopped arriving"),
        (409, "The meta_uuid or the content exists"),
        (413, "Body, file or pixels over a limit"),
        (415, "Not a supported image format"),
        (500, "A bug: reported in the same envelope"),
        (503, "A store or replica is unavailable, or the service is at capacity"),
    )
}


def ok(message: str = "ok", **fields: Any) -> dict[str, Any]:
    return {"succeed": True, "message": message, **fields}


def fail(status: int, message: str, **fields: Any) -> JSONResponse:
    return JSONResponse({"succeed": False, "message": message, **fields}, status_code=status)


def error_body(err: SearchEngineError) -> JSONResponse:
    extra: dict[str, Any] = {"store": err.store} if isinstance(err, StoreUnavailable) else {}
    response = fail(err.status, err.message, **{k: v for k, v in extra.items() if v})
    if isinstance(err, Overloaded):
        response.headers["Retry-After"] = str(err.retry_after_s)
    return response
