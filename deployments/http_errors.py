"""One envelope for every error: domain errors by their status, the rest as a logged 500."""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from deployments.flows import find_domain_error
from deployments.responses import error_body, fail
from image_search.errors import SearchEngineError

logger = logging.getLogger("ray.serve")


def error_response(exc: BaseException) -> JSONResponse:
    err = find_domain_error(exc)
    if err is not None:
        return error_body(err)
    logger.error("unhandled error", exc_info=exc)
    return fail(500, f"internal error: {type(exc).__name__}")


def install_error_handling(app: FastAPI, max_body_bytes: int) -> None:
    @app.exception_handler(StarletteHTTPException)
    async def _http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        return fail(exc.status_code, str(exc.detail))

    @app.exception_handler(RequestValidationError)
    async def _validation_error(_: Request, exc: RequestValidationError) -> JSONResponse:
        parts = [f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors()]
        return fail(400, "invalid request: " + "; ".join(parts))

    @app.exception_handler(SearchEngineError)
    async def _domain_error(_: Request, exc: SearchEngineError) -> JSONResponse:
        return error_response(exc)

    @app.middleware("http")
    async def _any_error(request: Request, call_next: Any) -> Any:
        """Ray-wrapped replica errors and anything unexpected still get the envelope.

        (Starlette re-raises after an `Exception` handler runs, which Serve turns into a bare
        500.)
        """
        try:
            return await call_next(request)
        except Exception as exc:
            return error_response(exc)

    @app.middleware("http")
    async def _reject_oversized(request: Request, call_next: Any) -> Any:
        """Refuse bodies over the limit from Content-Length, before they are spooled to disk."""
        length = request.headers.get("content-length")
        if length and length.isdigit() and int(length) > max_body_bytes:
            return fail(413, f"request body is {length} bytes; the limit is {max_body_bytes}")
        return await call_next(request)
