"""A real HTTP/1.1 server on loopback for the services tests cannot reach (CoinGecko, webhooks).

It speaks the wire protocol through h11 on Trio, so the client under test goes through its real
HTTP stack. A test installs a handler that sees each request and returns the response.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

import attrs
import h11
import trio


@attrs.frozen
class Request:
    method: str
    target: str
    headers: dict[str, str]
    body: bytes


@attrs.frozen
class Response:
    status: int = 200
    body: bytes = b""
    headers: dict[str, str] = attrs.Factory(dict)
    content_type: str = "application/json"


Handler = Callable[[Request], Awaitable[Response]]


@attrs.define
class LoopbackServer:
    port: int
    requests: list[Request]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


async def _serve_connection(
    stream: trio.SocketStream, handler: Handler, log: list[Request]
) -> None:
    connection = h11.Connection(h11.SERVER)
    async with stream:
        while True:
            event = connection.next_event()
            if event is h11.NEED_DATA:
                data = await stream.receive_some(65536)
                connection.receive_data(data)
                if not data:
                    return
                continue
            if isinstance(event, h11.ConnectionClosed) or event is h11.PAUSED:
                return
            if not isinstance(event, h11.Request):
                continue
            body = b""
            while True:
                part = connection.next_event()
                if part is h11.NEED_DATA:
                    connection.receive_data(await stream.receive_some(65536))
                elif isinstance(part, h11.Data):
                    body += part.data
                elif isinstance(part, h11.EndOfMessage):
                    break
            request = Request(
                method=event.method.decode(),
                target=event.target.decode(),
                headers={k.decode().lower(): v.decode() for k, v in event.headers},
                body=body,
            )
            log.append(request)
            response = await handler(request)
            headers = [
                ("content-type", response.content_type),
                ("content-length", str(len(response.body))),
                *response.headers.items(),
            ]
            await stream.send_all(
                connection.send(h11.Response(status_code=response.status, headers=headers)) or b""
            )
            await stream.send_all(connection.send(h11.Data(data=response.body)) or b"")
            await stream.send_all(connection.send(h11.EndOfMessage()) or b"")
            if connection.our_state is h11.MUST_CLOSE:
                return
            connection.start_next_cycle()


@asynccontextmanager
async def loopback_http(handler: Handler) -> AsyncIterator[LoopbackServer]:
    """Serve ``handler`` on 127.0.0.1 (a free port) for the duration of the block."""
    requests: list[Request] = []

    async def on_connection(stream: trio.SocketStream) -> None:
        # A client that goes away mid-request is its own business.
        with contextlib.suppress(
            trio.BrokenResourceError, trio.ClosedResourceError, h11.RemoteProtocolError
        ):
            await _serve_connection(stream, handler, requests)

    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(
            functools.partial(trio.serve_tcp, on_connection, 0, host="127.0.0.1")
        )
        port = listeners[0].socket.getsockname()[1]
        yield LoopbackServer(port=port, requests=requests)
        nursery.cancel_scope.cancel()
