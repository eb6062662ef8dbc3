"""`leanify serve --ray`: the same service as a Ray Serve deployment, on a local Ray cluster.

Each replica is what `leanify serve` is in one process: the model, warmed up, behind its own
dynamic batcher and bounded queue, answering the same endpoints with the same errors. Ray's
proxy spreads requests over the replicas (`--replicas N`); with `--max-replicas M` above N,
Ray's autoscaler adds replicas while each has more requests in flight than it batches at
once (queue length), and removes them when the queue drains. `/metrics` is Ray's own:
Prometheus metrics of the proxy and the replicas are on Ray's metrics export port.
"""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Callable
from typing import Any

from leanify.serve.app import OPEN_PATHS, Limits
from leanify.serve.errors import HTTPError, error_body


def _deployment(limits: Limits, api_key: str | None):
    """The replica class; defined here so that `ray` is imported only when it is used."""
    import hmac
    import json

    from starlette.requests import Request
    from starlette.responses import JSONResponse, StreamingResponse

    from leanify.serve.app import Service, warmed

    class Replica:
        def __init__(self, source: Any):
            # loaded and warmed up before Ray routes any request here
            self.service = Service(source, limits, on_fatal=lambda exc: None,
                                   model=warmed(source, limits))
            self.started = False
            self.pid = str(os.getpid())

        async def __call__(self, request: Request):
            if not self.started:  # the batcher lives on the replica's own event loop
                self.started = True
                await self.service.start()
            path = request.url.path
            try:
                if api_key and path not in OPEN_PATHS:
                    given = request.headers.get("authorization", "")
                    given = given[7:] if given.lower().startswith("bearer ") else ""
                    if not hmac.compare_digest(given.encode(), api_key.encode()):
                        raise HTTPError(401, "a valid API key is required (Authorization: "
                                             "Bearer KEY).", "authentication_error",
                                        {"WWW-Authenticate": "Bearer"})
                if request.method == "POST" and path == "/v1/chat/completions":
                    self._check_length(request)
                    chat = await self.service.chat(await request.body())
                    if chat.request.stream:
                        return StreamingResponse(chat.events(), media_type="text/event-stream",
                                                 headers={"X-Leanify-Replica": self.pid})
                    body, headers = await chat.whole(), {}
                else:
                    body, headers = await self._route(request, path)
            except HTTPError as exc:
                return JSONResponse(error_body(exc.message, exc.kind, exc.status), exc.status,
                                    headers={**exc.headers, "X-Leanify-Replica": self.pid})
            return JSONResponse(body, headers={**headers, "X-Leanify-Replica": self.pid})

        @staticmethod
        def _check_length(request: Request) -> None:
            length = request.headers.get("content-length", "0")
            if not length.isdigit() or int(length) > limits.max_body_bytes:
                raise HTTPError(413, f"the request body is over {limits.max_body_bytes} bytes.")

        async def _route(self, request: Request, path: str) -> tuple[dict, dict[str, str]]:
            service = self.service
            kinds = {"/v1/embeddings": "embedding", "/v1/classify": "classification"}
            if request.method == "POST" and path in kinds:
                self._check_length(request)
                return await service.answer(path, kinds[path], await request.body())
            if path == "/health":
                return {"status": "ok"}, {}
            if path == "/ready":
                return {"status": "ready", "model": service.source.name,
                        "kind": service.model.kind}, {}
            if path == "/v1/models":
                return {"object": "list", "data": [{"id": service.source.name,
                                                    "object": "model",
                                                    "owned_by": "leanify"}]}, {}
            if path == "/metrics":
                raise HTTPError(404, "under Ray, metrics are Ray's own: see its metrics "
                                     "export port.")
            raise HTTPError(404, f"there is no endpoint {json.dumps(path)}.")

    return Replica


def serve_ray(source: Any, limits: Limits, *, host: str, port: int, api_key: str | None,
              replicas: int, max_replicas: int | None,
              say: Callable[[str], None] = print) -> int:
    """Start a local Ray cluster, deploy, serve until SIGTERM or Ctrl-C, then shut down
    (Ray's proxy drains in-flight requests first)."""
    import ray
    from ray import serve

    ray.init(include_dashboard=False, log_to_driver=False, configure_logging=False,
             namespace="leanify")
    # ray.init puts its own SIGTERM handler (sys.exit) on the driver: ours replaces it at
    # once, so a stop that comes while the deployment starts is a graceful one too
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    try:
        serve.start(http_options={"host": host, "port": port})
        scaled = max_replicas is not None and max_replicas > replicas
        options: dict[str, Any] = {
            "name": "leanify",
            "max_ongoing_requests": limits.max_queue,
            "ray_actor_options": {"num_cpus": 0},  # threads are the model's; Ray need not
            "graceful_shutdown_timeout_s": limits.timeout_s + 5,
        }
        if scaled:
            options["autoscaling_config"] = {
                "min_replicas": replicas, "max_replicas": max_replicas,
                "target_ongoing_requests": limits.max_batch}
        else:
            options["num_replicas"] = replicas
        deployment = serve.deployment(**options)(_deployment(limits, api_key))
        serve.run(deployment.bind(source), name="leanify", route_prefix="/")
        say(f"leanify serve --ray: {source.name} on http://{host}:{port}, "
            f"{replicas}{f'-{max_replicas}' if scaled else ''} replicas; ready")
        stop.wait()
        say("leanify serve --ray: stopping; draining in-flight requests")
        serve.shutdown()
    finally:
        ray.shutdown()
    say("leanify serve --ray: stopped")
    return 0
