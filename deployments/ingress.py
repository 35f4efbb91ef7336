"""The Ingress deployment: a FastAPI app per replica, built over the handles it is given."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.staticfiles import StaticFiles
from ray import serve
from ray.serve.handle import DeploymentHandle

from deployments.admission import AdmissionMiddleware
from deployments.decoder import Decoder
from deployments.embedder import Embedder
from deployments.flows import DIRECT_DECODE_MAX, IngressFlows
from deployments.hops import LANES
from deployments.http_errors import install_error_handling
from deployments.indexer import Indexer
from deployments.replica_port import listen_on_node_address
from deployments.routes import WEB_DIR, router
from deployments.security import install_security
from image_search.config import settings_from_json


def create_app(flows: IngressFlows) -> FastAPI:
    """The HTTP app over one flows object: the service's, or one over stand-ins in tests."""
    app = FastAPI(
        title="image-search-engine",
        description="Search by image (以图搜图) on Ray Serve. Envelope: {succeed, message, ...}.",
        version="0.1.0",
    )
    app.state.flows = flows
    if WEB_DIR.is_dir():
        app.mount("/static", StaticFiles(directory=WEB_DIR), name="static")
    install_error_handling(app)
    app.include_router(router)
    # Added last, so it runs first: budgets and the gate apply before any body is read.
    app.add_middleware(AdmissionMiddleware, limits=flows.settings.limits)
    # Added after admission, so it runs before it: unwelcome requests take no slot.
    install_security(app, flows.settings)
    return app


@serve.deployment
@serve.ingress()
class Ingress:
    def __init__(
        self,
        decoder: DeploymentHandle[Decoder],
        embedder: DeploymentHandle[Embedder],
        indexer: DeploymentHandle[Indexer],
        settings_json: str,
    ) -> None:
        listen_on_node_address()
        self.flows = IngressFlows(decoder, embedder, indexer, settings_from_json(settings_json))

    def reconfigure(self, user_config: dict[str, Any]) -> None:
        """serve_config.yaml's user_config: hop_lanes (deployments/hops.py) and
        direct_decode_max (deployments/flows.py)."""
        self.flows.set_lanes(int(user_config.get("hop_lanes", LANES)))
        self.flows.set_direct_decode_max(
            int(user_config.get("direct_decode_max", DIRECT_DECODE_MAX))
        )

    def __serve_build_asgi_app__(self) -> FastAPI:
        # Serve calls this once the replica is constructed: the app is built over its handles.
        return create_app(self.flows)
