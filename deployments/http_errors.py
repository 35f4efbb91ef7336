"""One envelope for every error: domain errors by their status, the rest as a logged 500."""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from ray.exceptions import NodeDiedError, ObjectLostError, RayActorError, WorkerCrashedError
from ray.serve.exceptions import (
    BackPressureError,
    DeploymentUnavailableError,
    ReplicaUnavailableError,
)
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from deployments.envelope import error_body, fail
from deployments.flows import causes, find_domain_error
from image_search.errors import Overloaded, SearchEngineError

logger = logging.getLogger("ray.serve")


# A replica that died, is restarting or refuses more work (max_queued_requests) is a passing
# state of the graph, not a bug: the client gets a 503 it can retry, never a bare 500.
_TRANSIENT: tuple[type[BaseException], ...] = (
    RayActorError,
    WorkerCrashedError,
    NodeDiedError,
    ObjectLostError,
    BackPressureError,
    DeploymentUnavailableError,
    ReplicaUnavailableError,
)


def transient_failure(exc: BaseException) -> BaseException | None:
    """The Ray failure behind `exc` that a retry can get past, if there is one."""
    return next((c for c in causes(exc) if isinstance(c, _TRANSIENT)), None)


def error_response(exc: BaseException) -> JSONResponse:
    err = find_domain_error(exc)
    if err is not None:
        return error_body(err)
    failure = transient_failure(exc)
    if failure is not None:
        logger.warning("transient failure answered 503: %s", type(failure).__name__)
        return error_body(
            Overloaded(f"the service is recovering ({type(failure).__name__}); retry shortly")
        )
    logger.error("unhandled error", exc_info=exc)
    return fail(500, f"internal error: {type(exc).__name__}")


def install_error_handling(app: FastAPI) -> None:
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

    app.add_middleware(EnvelopeErrors)


class EnvelopeErrors:
    """Ray-wrapped replica errors and anything unexpected still get the envelope.

    (Starlette re-raises after an `Exception` handler runs, which Serve turns into a bare 500.)
    Plain ASGI rather than `@app.middleware("http")`: Starlette's BaseHTTPMiddleware runs each
    request through an extra task and memory streams, a measurable share of a search's CPU.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def tracked(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, tracked)
        except Exception as exc:
            if started:  # half a response is out: nothing better to send than a reset
                raise
            await error_response(exc)(scope, receive, send)
