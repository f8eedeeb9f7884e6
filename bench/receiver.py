"""A minimal Flashduty receiver for the delivery benchmark: it answers, and counts, nothing more.

The strict emulator (``bridge emulate``) validates every event and costs about as much CPU per
event as the bridge itself; on a two-core machine that hides the bridge's own cost. This server
reads each request (keep-alive, ``Content-Length`` bodies), counts every ``POST`` as one event and
answers Flashduty's success JSON, or during an outage Flashduty's 503 error envelope. It parses no
JSON. Control, as the emulator's: ``GET /-/stats`` (``{"events": n}``), ``PUT /-/faults`` (outage
on, the body is ignored), ``DELETE /-/faults`` (outage off), ``GET /-/healthy``.

    python -m bench.receiver --port 8080

Bounded: a request line and headers over 64 KiB or a body over 16 MiB closes the connection.
"""

from __future__ import annotations

import argparse
import asyncio
import json

MAX_HEAD = 64 * 1024
MAX_BODY = 16 * 1024 * 1024
OK = b'{"request_id":"bench","data":{"alert_key":"bench"}}'
OUTAGE = b'{"request_id":"bench","error":{"code":"InternalError","message":"outage"}}'


class State:
    def __init__(self) -> None:
        self.events = 0
        self.outage = False


def answer(status: int, body: bytes) -> bytes:
    reason = {200: "OK", 404: "Not Found", 503: "Service Unavailable"}[status]
    head = f"HTTP/1.1 {status} {reason}\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    return head.encode() + body


async def serve(state: State, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            if len(head) > MAX_HEAD:
                break
            lines = head.decode("latin-1").split("\r\n")
            method, target, _ = lines[0].split(" ", 2)
            length = 0
            for line in lines[1:]:
                name, _, value = line.partition(":")
                if name.strip().lower() == "content-length":
                    length = int(value)
            if length > MAX_BODY:
                break
            if length:
                await reader.readexactly(length)
            if method == "POST":
                if state.outage:
                    writer.write(answer(503, OUTAGE))
                else:
                    state.events += 1
                    writer.write(answer(200, OK))
            elif target == "/-/stats":
                writer.write(answer(200, json.dumps({"events": state.events}).encode()))
            elif target == "/-/faults" and method in ("PUT", "DELETE"):
                state.outage = method == "PUT"
                writer.write(answer(200, b"{}"))
            elif target == "/-/healthy":
                writer.write(answer(200, b'{"status":"ok"}'))
            else:
                writer.write(answer(404, b"{}"))
            await writer.drain()
    except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError, ValueError):
        pass
    finally:
        writer.close()


async def main(host: str, port: int) -> None:
    state = State()
    server = await asyncio.start_server(lambda r, w: serve(state, r, w), host, port, limit=MAX_HEAD)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="python -m bench.receiver", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    asyncio.run(main(args.host, args.port))
