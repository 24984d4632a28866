"""charlm on Ray Serve: the same FastAPI app (routes, streaming, errors, probes) in every replica, each
replica with engines of its own, replicas autoscaled on their ongoing requests.

    serve run deploy/ray/serve.yaml    # from the repository root: http://127.0.0.1:8000

A request goes Serve's HTTP proxy -> one replica (Serve picks among the least busy) -> the app's route
-> that replica's engine for the model -> events streamed back through the proxy. A client that goes
away is noticed by the proxy, which cancels the replica's handler, which cancels the sequences in the
engine, as under `charlm serve`. Settings are `charlm serve`'s, by name, from the config's `args`
(CHARLM_* variables of the replicas also apply). Every answer names its replica (X-Charlm-Replica).
"""

from __future__ import annotations

import logging
from typing import Any

from ray import serve
from ray.serve import Application
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.frontend.app import create_app
from service.settings import Settings

logger = logging.getLogger(__name__)
REPLICA_HEADER = b"x-charlm-replica"


class ReplicaHeader:
    """Adds the replica's id to every HTTP answer: which replica served what, in logs and tests."""

    def __init__(self, app: ASGIApp, replica: str):
        self.app, self.replica = app, replica.encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_header(message: Message) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", []), (REPLICA_HEADER, self.replica)]}
            await send(message)

        await self.app(scope, receive, send_with_header)


def replica_app(overrides: dict[str, Any]) -> ASGIApp:
    """The app of one replica, made when the replica starts; Serve runs its lifespan (the models load
    then) before the replica takes requests, and its shutdown when the replica stops."""
    settings = Settings(**overrides)
    app = create_app(settings)
    replica = serve.get_replica_context().replica_id.unique_id
    app.add_middleware(ReplicaHeader, replica=replica)
    logger.info("replica %s: models from %s", replica, settings.models_dir)
    return app


def build(args: dict[str, Any]) -> Application:
    """Serve's application builder (`import_path: deploy.ray.app:build`): `args` are charlm settings by
    name, e.g. {"models_dir": "models", "max_batch_size": 32}. Deployment options (replicas,
    autoscaling, resources) come from the Serve config; the defaults here suit one CPU per replica."""
    overrides = dict(args)
    Settings(**overrides)  # a bad setting fails the deployment here, naming it, not in every replica

    def app_of_this_replica() -> ASGIApp:
        return replica_app(overrides)

    @serve.deployment(
        name="charlm",
        # Streams are long: a replica holds as many as its batch steps together (CPU default 32).
        max_ongoing_requests=32,
        # A replica being stopped gets this long for its streams (CHARLM_SHUTDOWN_GRACE_S, 30 s, + 5).
        graceful_shutdown_timeout_s=35,
    )
    @serve.ingress(app_of_this_replica)
    class Charlm:
        """One replica: the charlm app with its own engines."""

    return Charlm.bind()  # type: ignore[attr-defined]  # serve.deployment makes the class a Deployment
