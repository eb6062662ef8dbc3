"""`leanify loadtest`: open-loop load at a ramp of rates against a server on this machine.

Arrivals are Poisson at each rate and fired on schedule whether or not earlier requests came
back, so a slow server cannot slow the offered load down (a closed loop, where each simulated
user waits for its answer, hides exactly the queueing this is meant to show). Latency counts
from the scheduled arrival, so a client that falls behind does not hide waiting either.
Locust's users are closed loops (a user waits for its response before its next task), hence a
small asyncio generator on aiohttp here: about 1 ms of CPU per request where httpx's pool took
9 ms with thousands of connections open, on cores it shares with the server.

Per rate: p50/p95/p99 of answered requests, error and rejection (429) rates, throughput, and
the server's own split from its `Server-Timing` header (queue, model, batch size; the rest
of the round trip is HTTP and the client). The best rate is the highest one whose p95 holds the
budget with under 1% errors and rejections.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import math
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any
from urllib.parse import urlsplit

import numpy as np

from leanify.errors import LeanifyError

MAX_DURATION_S = 600.0  # per rate: a load test always stops by itself
MAX_RATE = 5000.0
HOLD_FRACTION = 0.01  # errors and rejections a rate may have and still hold the budget


@dataclass(frozen=True)
class LoadSettings:
    url: str  # the endpoint, e.g. http://127.0.0.1:8000/v1/embeddings
    rates: tuple[float, ...] = (5.0, 20.0, 50.0)
    duration_s: float = 10.0
    timeout_s: float = 10.0
    p95_budget_ms: float | None = None
    api_key: str | None = None
    seed: int = 0
    model: str | None = None  # the request's "model" field
    pause_s: float = 1.0  # between rates, for the queue to drain

    def check(self) -> None:
        loopback_url(self.url)
        if not self.rates or any(not (0 < r <= MAX_RATE) for r in self.rates):
            raise LeanifyError(f"rates must be between 0 and {MAX_RATE:g} requests/s.",
                               fix="Use e.g. --rates 5,20,50.")
        if not 0 < self.duration_s <= MAX_DURATION_S:
            raise LeanifyError(f"--duration must be between 0 and {MAX_DURATION_S:g} s.",
                               fix="Use e.g. --duration 10.")
        if self.p95_budget_ms is not None and self.p95_budget_ms <= 0:
            raise LeanifyError("--p95-budget-ms must be positive.", fix="Use e.g. 50.")


def loopback_url(url: str) -> str:
    """The URL, if it points at this machine; load tests never leave it."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    try:
        local = host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        local = False
    if parts.scheme not in ("http", "https") or not local:
        raise LeanifyError(
            f"{url} is not a loopback URL; leanify load-tests servers on this machine only.",
            fix="Start the server here and use http://127.0.0.1:PORT/...")
    return url


CHAT_MAX_TOKENS = 64  # per chat completion a load test asks for


def payloads(texts: Sequence[str], model: str | None = None, url: str = "") -> list[bytes]:
    """One OpenAI-style body per text: {"input": text}, or for a chat endpoint the text as
    the user's message, greedy, CHAT_MAX_TOKENS new tokens."""
    extra = {"model": model} if model else {}
    if urlsplit(url).path.rstrip("/").endswith("/chat/completions"):
        return [json.dumps({"messages": [{"role": "user", "content": t}], "temperature": 0,
                            "max_tokens": CHAT_MAX_TOKENS, **extra}).encode() for t in texts]
    return [json.dumps({"input": t, **extra}).encode() for t in texts]


@dataclass
class Outcome:
    status: int  # 0: no answer (timeout, connection refused)
    latency_s: float  # from the scheduled arrival
    timing: dict[str, float]  # Server-Timing, ms
    error: str = ""


def _server_timing(header: str | None) -> dict[str, float]:
    out: dict[str, float] = {}
    for part in (header or "").split(","):
        name, _, rest = part.strip().partition(";")
        if rest.startswith("dur="):
            try:
                out[name] = float(rest[4:])
            except ValueError:
                pass
    return out


async def _one(client: Any, url: str, body: bytes, scheduled: float,
               headers: dict[str, str]) -> Outcome:
    loop = asyncio.get_running_loop()
    try:
        async with client.post(url, data=body, headers=headers) as response:
            await response.read()
            return Outcome(response.status, loop.time() - scheduled,
                           _server_timing(response.headers.get("server-timing")))
    except Exception as exc:  # the server's failure to answer is a measurement, not a crash
        return Outcome(0, loop.time() - scheduled, {}, type(exc).__name__)


async def _run_rate(client: Any, settings: LoadSettings, bodies: list[bytes], rate: float,
                    rng: np.random.Generator) -> tuple[list[Outcome], float]:
    loop = asyncio.get_running_loop()
    gaps = rng.exponential(1.0 / rate, size=int(rate * settings.duration_s * 2) + 16)
    arrivals = np.cumsum(gaps)
    arrivals = arrivals[arrivals < settings.duration_s]
    headers = {"content-type": "application/json"}
    if settings.api_key:
        headers["authorization"] = f"Bearer {settings.api_key}"
    start = loop.time()
    tasks = []
    for i, at in enumerate(arrivals):
        delay = start + at - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(
            _one(client, settings.url, bodies[i % len(bodies)], start + at, headers)))
    outcomes = list(await asyncio.gather(*tasks))
    return outcomes, loop.time() - start


def _pct(values: list[float], q: float) -> float | None:
    return float(np.percentile(values, q)) if values else None


def summarize(outcomes: list[Outcome], rate: float, duration_s: float, wall_s: float,
              budget_ms: float | None) -> dict[str, Any]:
    n = len(outcomes)
    ok = [o for o in outcomes if 200 <= o.status < 300]
    rejected = sum(o.status == 429 for o in outcomes)
    errors = n - len(ok) - rejected
    lat = [o.latency_s * 1e3 for o in ok]
    split = {}
    for key, name in (("queue", "queue_p50_ms"), ("model", "model_p50_ms"),
                      ("batch", "batch_p50")):  # the batch size rides in a dur= field
        values = [o.timing[key] for o in ok if key in o.timing]
        split[name] = round(statistics.median(values), 3) if values else None
    p50 = _pct(lat, 50)
    inside = (split["queue_p50_ms"] or 0) + (split["model_p50_ms"] or 0)
    split["http_and_client_p50_ms"] = round(p50 - inside, 3) if p50 is not None and \
        split["model_p50_ms"] is not None else None
    point = {
        "rate_rps": rate, "sent": n, "offered_rps": round(n / duration_s, 3),
        "answered": len(ok), "throughput_rps": round(len(ok) / max(wall_s, 1e-9), 3),
        "p50_ms": _round(p50), "p95_ms": _round(_pct(lat, 95)), "p99_ms": _round(_pct(lat, 99)),
        "max_ms": _round(max(lat) if lat else None),
        "rejected": rejected, "rejected_rate": round(rejected / n, 4) if n else 0.0,
        "rejected_p95_ms": _round(_pct([o.latency_s * 1e3 for o in outcomes
                                        if o.status == 429], 95)),
        "errors": errors, "error_rate": round(errors / n, 4) if n else 0.0,
        "error_kinds": sorted({o.error or str(o.status) for o in outcomes
                               if o.status != 429 and not 200 <= o.status < 300}),
        "server": split,
    }
    point["holds_budget"] = (
        budget_ms is not None and bool(lat) and point["p95_ms"] <= budget_ms
        and point["rejected_rate"] + point["error_rate"] < HOLD_FRACTION)
    return point


def _round(v: float | None) -> float | None:
    return None if v is None or math.isnan(v) else round(v, 3)


def run_loadtest(settings: LoadSettings, texts: Sequence[str],
                 say: Callable[[str], None] = lambda _: None) -> dict[str, Any]:
    settings.check()
    if not texts:
        raise LeanifyError("there are no texts to send.", fix="Give a non-empty --data file.")
    return asyncio.run(_run_all(settings, payloads(texts, settings.model, settings.url),
                                 say))


async def _run_all(settings: LoadSettings, bodies: list[bytes],
                   say: Callable[[str], None]) -> dict[str, Any]:
    import aiohttp

    rng = np.random.default_rng(settings.seed)
    started = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    points = []
    # No pool limit: a capped pool would queue requests in the client and close the loop.
    connector = aiohttp.TCPConnector(limit=0, force_close=False)
    timeout = aiohttp.ClientTimeout(total=settings.timeout_s)
    answered = False
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as client:
        for i, rate in enumerate(settings.rates):
            if i:
                await asyncio.sleep(settings.pause_s)
            outcomes, wall = await _run_rate(client, settings, bodies, rate, rng)
            point = summarize(outcomes, rate, settings.duration_s, wall, settings.p95_budget_ms)
            points.append(point)
            say(f"{rate:g} req/s: p95 {point['p95_ms']} ms, {point['answered']}/{point['sent']}"
                f" answered, {point['rejected']} rejected, {point['errors']} errors")
            answered = answered or any(o.status for o in outcomes)
            if not answered:  # a wrong URL or a dead server, not an overload
                raise LeanifyError(
                    f"no request to {settings.url} got an answer "
                    f"({', '.join(point['error_kinds'])}).",
                    fix="Check that the server is running and the URL's path is its endpoint.")
    holding = [p["rate_rps"] for p in points if p["holds_budget"]]
    return {"tool": "leanify loadtest", "started": started, "settings": asdict(settings) | {
                "api_key": bool(settings.api_key)},
            "points": points,
            "best_rate_rps": max(holding) if holding else None,
            "verdict": _verdict(settings, points, holding)}


def _verdict(settings: LoadSettings, points: list[dict[str, Any]], holding: list[float]) -> str:
    if settings.p95_budget_ms is None:
        return "no --p95-budget-ms given: the latency at each rate is measured above."
    budget = f"a p95 of {settings.p95_budget_ms:g} ms"
    if not holding:
        return f"no rate tried held {budget} (lowest tried {min(settings.rates):g} req/s)."
    best = max(holding)
    above = [p for p in points if p["rate_rps"] > best]
    tail = "" if above else " (the highest rate tried: try higher rates)"
    return f"{best:g} req/s is the highest rate tried that held {budget}{tail}."
