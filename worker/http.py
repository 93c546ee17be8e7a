"""The worker's HTTP client to the platform: the ``httpx`` API over aiohttp's connection pool.

Every platform call of the activities (register, heartbeat, inbox reads, replies) goes through one shared
``httpx.AsyncClient``. With httpx's own transport (httpcore) a busy worker spent about 2 ms of CPU per request:
httpcore's pool checks every pooled connection on each request, and each check is a ``select()`` call. aiohttp's
pool does the same work for about 0.35 ms (40 concurrent POSTs to a local server, uvloop: 1.9 vs 0.35 ms;
benchmarks/RESULTS.md). The activities keep speaking ``httpx`` (requests, responses, ``httpx.HTTPError``): only the
transport changes, through the ``httpx-aiohttp`` package.

``MOLECULE_CONNECT_HTTP_TRANSPORT=httpx`` switches back to httpx's own transport (e.g. to rule the pool out when
debugging); the default is ``aiohttp``. httpx's transport is also used when a proxy is configured in the environment
(``HTTPS_PROXY``, ``HTTP_PROXY``, ``ALL_PROXY``, with ``NO_PROXY``): httpx applies those only to its own transport,
and a worker behind a proxy must keep reaching its platform.
"""

from __future__ import annotations

import os
import urllib.request
from collections.abc import AsyncIterator

import aiohttp
import httpx
from httpx_aiohttp import AiohttpTransport

HTTP_TRANSPORT_ENV = "MOLECULE_CONNECT_HTTP_TRANSPORT"
"""``aiohttp`` (default) or ``httpx``."""


class PlatformTransport(AiohttpTransport):
    """``httpx_aiohttp.AiohttpTransport`` whose every network failure is an ``httpx.TransportError``.

    The package maps aiohttp's connection and timeout errors to httpx's; any other ``aiohttp.ClientError`` (a
    malformed response, a payload cut short) becomes ``httpx.TransportError`` here, so the activities' single
    ``except httpx.HTTPError`` (a retryable ``Transient``, docs/protocol.md §2) still sees every network failure. A
    refused connection is an ``httpx.ConnectError`` and a connection dropped by the server an ``httpx.ReadError``
    (the package calls both ``ConnectTimeout``); real timeouts stay ``httpx.TimeoutException``.
    """

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        """Send ``request``; raises ``httpx.TransportError`` (or a subclass) on any network failure."""
        try:
            response = await super().handle_async_request(request)
        except httpx.ConnectTimeout as err:
            cause = err.__cause__
            if not isinstance(cause, aiohttp.ClientConnectionError) or isinstance(cause, aiohttp.ServerTimeoutError):
                raise
            # httpx-aiohttp 0.2 files every broken connection (refused, reset, closed by the server) as a
            # ConnectTimeout; name it for what it was, so logs and errors do not send anyone after a slow network.
            if isinstance(cause, aiohttp.ClientConnectorError):
                raise httpx.ConnectError(str(cause), request=request) from cause
            raise httpx.ReadError(f"{type(cause).__name__}: {cause}", request=request) from cause
        except aiohttp.ClientError as err:
            raise httpx.TransportError(f"{type(err).__name__}: {err}", request=request) from err
        response.stream = _MappedStream(response.stream, request)
        return response


class _MappedStream(httpx.AsyncByteStream):
    """A response body whose aiohttp read errors arrive as ``httpx.ReadError``."""

    def __init__(self, stream: httpx.AsyncByteStream | httpx.SyncByteStream, request: httpx.Request) -> None:
        assert isinstance(stream, httpx.AsyncByteStream)
        self._stream = stream
        self._request = request

    async def __aiter__(self) -> AsyncIterator[bytes]:
        try:
            async for chunk in self._stream:
                yield chunk
        except aiohttp.ClientError as err:
            raise httpx.ReadError(f"{type(err).__name__}: {err}", request=self._request) from err

    async def aclose(self) -> None:
        await self._stream.aclose()


def _proxy_configured() -> bool:
    """Whether the environment names an HTTP proxy (what httpx's ``trust_env`` would honour)."""
    return any(scheme in urllib.request.getproxies() for scheme in ("http", "https", "all"))


def platform_client(*, timeout: httpx.Timeout, limits: httpx.Limits) -> httpx.AsyncClient:
    """A new ``httpx.AsyncClient`` for platform calls, on aiohttp's pool unless turned off (module docstring).

    Args:
        timeout: Connect (``connect``), read (``read``) and pool-wait (``pool``) limits in seconds; the aiohttp
            transport has no write timeout of its own.
        limits: ``max_connections`` caps the pool; ``keepalive_expiry`` is how long an idle connection is kept.

    Returns:
        The client; close it with ``await client.aclose()``.
    """
    if os.environ.get(HTTP_TRANSPORT_ENV, "aiohttp").strip().lower() == "httpx" or _proxy_configured():
        return httpx.AsyncClient(timeout=timeout, limits=limits)
    return httpx.AsyncClient(timeout=timeout, transport=PlatformTransport(limits=limits))
