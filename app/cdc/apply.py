"""``loyalty-cdp connectors apply``: push the rendered configs to Kafka Connect's REST API.

``PUT /connectors/<name>/config`` creates or updates a connector idempotently, so applying
twice is harmless. Transient connection errors are retried (tenacity); an HTTP error from
Connect is reported with its message.
"""

from __future__ import annotations

import httpx
from tenacity import retry, retry_if_exception_type, stop_after_attempt, wait_exponential

from app.cdc.connectors import load_connectors, render_connect
from app.settings import settings
from app.stack.errors import StackError

__all__ = ["apply_connectors"]


# A few quick retries ride out a blip; a Connect that is down is reported in about 2 s (a
# deployment waits for Connect's health first, as docker-compose.yml does).
@retry(
    retry=retry_if_exception_type(httpx.TransportError),
    stop=stop_after_attempt(4),
    wait=wait_exponential(multiplier=0.25, max=2),
    reraise=True,
)
def _put(client: httpx.Client, url: str, config: dict[str, str]) -> httpx.Response:
    return client.put(url, json=config)


def apply_connectors(connect_url: str) -> dict[str, int]:
    """Apply every connector; return ``{connector name: HTTP status}``."""
    base = connect_url.rstrip("/")
    results: dict[str, int] = {}
    with httpx.Client(timeout=httpx.Timeout(30, connect=5)) as client:
        for spec in load_connectors(settings().connectors_dir):
            body = render_connect(spec)
            try:
                resp = _put(client, f"{base}/connectors/{body['name']}/config", body["config"])
            except httpx.TransportError as exc:
                raise StackError(f"Kafka Connect at {base} unreachable: {exc}") from exc
            if resp.status_code >= 400:
                raise StackError(
                    f"Kafka Connect rejected {body['name']}: {resp.status_code} {resp.text[:200]}"
                )
            results[body["name"]] = resp.status_code
    return results
