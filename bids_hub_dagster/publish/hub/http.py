"""Every HTTP wait of ``huggingface_hub`` bounded: a Hub that accepts connections but never answers is given up on.

``huggingface_hub`` (2.x) makes its clients with ``timeout=None`` and passes ``timeout=None`` on many calls,
so a request to a server that never answers waits forever. :func:`bound_http_waits` wraps the client
factories it uses (keeping its headers, user agent and event hooks) in ones whose clients give every
request a connect timeout of :data:`CONNECT_TIMEOUT` s and read/write timeouts of ``$BIDS_HUB_HTTP_TIMEOUT``
s (default :data:`DEFAULT_TIMEOUT`) wherever the request has none. A request's own, finite timeouts (10 s
for ``huggingface_hub``'s metadata requests) are kept. Xet transfers use their own client, not these.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from typing import Any

import httpx2
from huggingface_hub.utils import _http

from ...errors import ConfigError

TIMEOUT_ENV = "BIDS_HUB_HTTP_TIMEOUT"
DEFAULT_TIMEOUT = 120.0  # seconds without a byte read or written
CONNECT_TIMEOUT = 10.0

_LOCK = threading.Lock()


def http_timeout() -> float:
    """Seconds an HTTP read or write of the Hub may wait: ``$BIDS_HUB_HTTP_TIMEOUT``, else 120."""
    value = os.environ.get(TIMEOUT_ENV, "").strip()
    if not value:
        return DEFAULT_TIMEOUT
    try:
        seconds = float(value)
    except ValueError:
        seconds = -1.0
    if not 0 < seconds < float("inf"):
        raise ConfigError(f"{TIMEOUT_ENV}={value!r} is not a number of seconds above 0 (default 120).")
    return seconds


def _limits(timeout: float) -> dict[str, float]:
    return {"connect": min(CONNECT_TIMEOUT, timeout), "read": timeout, "write": timeout}


def _bounded(request: httpx2.Request, limits: dict[str, float]) -> None:
    """Fill in the limits the request lacks (None: wait forever); its finite ones are kept."""
    timeouts = dict(request.extensions.get("timeout") or {})
    if all(timeouts.get(key) is not None for key in limits):
        return
    for key, limit in limits.items():
        if timeouts.get(key) is None:
            timeouts[key] = limit
    request.extensions = {**request.extensions, "timeout": timeouts}


def _wrap(factory: Callable[[], Any], timeout: float, hook: Callable) -> Callable[[], Any]:
    def bounded_factory():
        client = factory()  # huggingface_hub's own (or the one a program installed): headers, hooks, proxies
        hooks = client.event_hooks
        client.event_hooks = {**hooks, "request": [*hooks.get("request", []), hook]}
        return client

    bounded_factory.bids_hub_wraps = factory  # type: ignore[attr-defined]
    bounded_factory.bids_hub_timeout = timeout  # type: ignore[attr-defined]
    return bounded_factory


def bound_http_waits() -> float:
    """Install the bounded client factories (once per process and timeout); returns the read timeout in s.

    Raises:
        ConfigError: ``$BIDS_HUB_HTTP_TIMEOUT`` is not a positive number.
    """
    timeout = http_timeout()
    limits = _limits(timeout)

    def hook(request: httpx2.Request) -> None:
        _bounded(request, limits)

    async def async_hook(request: httpx2.Request) -> None:
        _bounded(request, limits)

    with _LOCK:
        current = getattr(_http, "_GLOBAL_CLIENT_FACTORY", _http.default_client_factory)
        if getattr(current, "bids_hub_timeout", None) != timeout:
            inner = getattr(current, "bids_hub_wraps", current)
            _http.set_client_factory(_wrap(inner, timeout, hook))  # the next get_session() builds one
        current = getattr(_http, "_GLOBAL_ASYNC_CLIENT_FACTORY", _http.default_async_client_factory)
        if getattr(current, "bids_hub_timeout", None) != timeout:
            inner = getattr(current, "bids_hub_wraps", current)
            _http.set_async_client_factory(_wrap(inner, timeout, async_hook))
    return timeout
