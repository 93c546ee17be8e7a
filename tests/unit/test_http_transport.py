"""worker/http.py: the platform client on aiohttp's pool answers like httpx, and fails with httpx's errors.

A raw asyncio TCP server on loopback plays the platform, so each network failure is real: refused connections,
a server that never answers, a connection dropped in the middle of a body.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator, Awaitable, Callable

import httpx
import pytest

from worker.http import HTTP_TRANSPORT_ENV, PlatformTransport, platform_client

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]
TIMEOUT = httpx.Timeout(connect=2.0, read=0.5, write=2.0, pool=2.0)
LIMITS = httpx.Limits(max_connections=4, max_keepalive_connections=4)


async def _read_request(reader: asyncio.StreamReader) -> bytes:
    head = await reader.readuntil(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n"):
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    return await reader.readexactly(length) if length else b""


async def _answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Echo each request body back as JSON, keeping the connection alive."""
    try:
        while True:
            body = await _read_request(reader)
            payload = b'{"echo": "' + body + b'"}'
            writer.write(
                b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                + f"Content-Length: {len(payload)}\r\n\r\n".encode()
                + payload
            )
            await writer.drain()
    except (asyncio.IncompleteReadError, ConnectionError):
        writer.close()


async def _cut_body(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Promise 1000 bytes, send 10, hang up."""
    await _read_request(reader)
    writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n0123456789")
    await writer.drain()
    writer.close()


async def _never_answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await _read_request(reader)
    await asyncio.sleep(30)


async def _garbage(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await _read_request(reader)
    writer.write(b"this is not HTTP\r\n\r\n")
    await writer.drain()
    writer.close()


@pytest.fixture
async def serve() -> AsyncIterator[Callable[[Handler], Awaitable[str]]]:
    servers: list[asyncio.Server] = []

    async def start(handler: Handler) -> str:
        server = await asyncio.start_server(handler, "127.0.0.1", 0)
        servers.append(server)
        port = server.sockets[0].getsockname()[1]
        return f"http://127.0.0.1:{port}"

    yield start
    for server in servers:
        server.close()


def test_platform_client_uses_aiohttp_unless_turned_off(monkeypatch: pytest.MonkeyPatch):
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.delenv(HTTP_TRANSPORT_ENV, raising=False)
    assert isinstance(platform_client(timeout=TIMEOUT, limits=LIMITS)._transport, PlatformTransport)

    monkeypatch.setenv(HTTP_TRANSPORT_ENV, "httpx")
    assert isinstance(platform_client(timeout=TIMEOUT, limits=LIMITS)._transport, httpx.AsyncHTTPTransport)


def test_platform_client_behind_a_proxy_keeps_httpx_transport_which_honours_it(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.delenv(HTTP_TRANSPORT_ENV, raising=False)
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.internal:3128")

    client = platform_client(timeout=TIMEOUT, limits=LIMITS)

    assert isinstance(client._transport, httpx.AsyncHTTPTransport)
    assert client._transport_for_url(httpx.URL("https://platform.example/registry/heartbeat")) is not client._transport


async def test_requests_and_json_round_trip_over_kept_alive_connections(serve):
    url = await serve(_answer)
    async with platform_client(timeout=TIMEOUT, limits=LIMITS) as http:
        responses = await asyncio.gather(*(http.post(f"{url}/a2a", content=str(n).encode()) for n in range(20)))

    assert [r.status_code for r in responses] == [200] * 20
    assert [r.json() for r in responses] == [{"echo": str(n)} for n in range(20)]


async def test_refused_connection_is_an_httpx_connect_error():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]  # closed again below: nothing listens there
    async with platform_client(timeout=TIMEOUT, limits=LIMITS) as http:
        with pytest.raises(httpx.ConnectError):
            await http.get(f"http://127.0.0.1:{port}/registry/heartbeat")


async def test_silent_server_is_an_httpx_timeout(serve):
    url = await serve(_never_answer)
    async with platform_client(timeout=TIMEOUT, limits=LIMITS) as http:
        with pytest.raises(httpx.TimeoutException):
            await http.get(f"{url}/workspaces/ws/activity")


@pytest.mark.parametrize("handler", [_cut_body, _garbage], ids=["body-cut-short", "not-http"])
async def test_broken_response_is_an_httpx_transport_error(serve, handler: Handler):
    url = await serve(handler)
    async with platform_client(timeout=TIMEOUT, limits=LIMITS) as http:
        with pytest.raises(httpx.TransportError):
            await http.get(f"{url}/workspaces/ws/activity")
