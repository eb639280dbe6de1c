"""A TCP proxy that delays every byte by a fixed time in each direction.

    python bench/delay_proxy.py LISTEN_HOST LISTEN_PORT TARGET_HOST TARGET_PORT DELAY_MS

Used by bench/scaleout.py to add round-trip time between workers and
PostgreSQL when the kernel has no ``netem`` qdisc (``tc qdisc add ... netem``
fails with "Specified qdisc kind is unknown").  DELAY_MS is added once per
direction, so a round trip gains twice that.  Order is kept: each direction
is one queue of (deadline, bytes) written in turn.  It costs CPU (Python, one
event loop) that netem would not.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import sys
import time


async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, delay: float) -> None:
    queue: collections.deque[tuple[float, bytes]] = collections.deque()
    more = asyncio.Event()
    done = False

    async def send() -> None:
        while True:
            while not queue:
                if done:
                    return
                more.clear()
                await more.wait()
            deadline, data = queue.popleft()
            wait = deadline - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
            writer.write(data)
            await writer.drain()

    sender = asyncio.create_task(send())
    try:
        while True:
            data = await reader.read(65536)
            if not data:
                break
            queue.append((time.monotonic() + delay, data))
            more.set()
    finally:
        done = True
        more.set()
        with contextlib.suppress(Exception):
            await sender
        with contextlib.suppress(Exception):
            writer.close()


async def main(host: str, port: int, target_host: str, target_port: int, delay: float) -> None:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection(target_host, target_port)
        except OSError:
            writer.close()
            return
        for sock in (writer.get_extra_info("socket"), up_writer.get_extra_info("socket")):
            with contextlib.suppress(Exception):
                import socket

                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        await asyncio.gather(
            pipe(reader, up_writer, delay), pipe(up_reader, writer, delay), return_exceptions=True
        )

    server = await asyncio.start_server(handle, host, port)
    print(
        f"delay proxy {host}:{port} -> {target_host}:{target_port}, {delay * 1000} ms", flush=True
    )
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    h, p, th, tp, ms = sys.argv[1:6]
    asyncio.run(main(h, int(p), th, int(tp), float(ms) / 1000))
