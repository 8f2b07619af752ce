"""A TCP proxy that holds back every chunk, each way: added latency without ``netem``.

It runs inside a worker's network namespace, where an iptables REDIRECT hands it every
TCP connection arriving over the link (see ``netns.Link.redirect_tcp``). For each one it
reads the original destination (SO_ORIGINAL_DST), dials it from inside the namespace
and forwards bytes both ways, each chunk sent ``--delay`` seconds after it arrived, in
order. SIGUSR1 switches the delay on, SIGUSR2 off, for connections already open too: a
manager's long-lived streams are delayed as much as new connections.

Usage: python delayproxy.py --port P [--delay 0.2]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import socket
import struct

SO_ORIGINAL_DST = 80  # linux/netfilter_ipv4.h


class Delay:
    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.on = False

    def now(self) -> float:
        return self.seconds if self.on else 0.0


def original_destination(sock: socket.socket) -> tuple[str, int]:
    raw = sock.getsockopt(socket.SOL_IP, SO_ORIGINAL_DST, 16)
    (port,) = struct.unpack_from("!H", raw, 2)
    return socket.inet_ntoa(raw[4:8]), port


async def pump(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, delay: Delay) -> None:
    """Copy one direction; each chunk waits its delay, measured from when it arrived."""
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()

    async def read() -> None:
        try:
            while data := await reader.read(65536):
                queue.put_nowait((loop.time() + delay.now(), data))
        finally:
            queue.put_nowait((loop.time() + delay.now(), b""))  # end of stream (or reset)

    reading = asyncio.create_task(read())
    try:
        while True:
            due, data = await queue.get()
            await asyncio.sleep(max(0.0, due - loop.time()))
            if not data:
                if reading.done() and reading.exception():
                    raise ConnectionResetError("peer reset")
                if writer.can_write_eof():
                    writer.write_eof()
                return
            writer.write(data)
            await writer.drain()
    finally:
        reading.cancel()


def reset(writer: asyncio.StreamWriter) -> None:
    """Close with an RST, as the far end's failure would look to the near end."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


async def handle(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, delay: Delay, own_port: int
) -> None:
    host, port = original_destination(writer.get_extra_info("socket"))
    if port == own_port:
        reset(writer)  # dialled directly, not redirected: nowhere to go
        return
    try:
        up_reader, up_writer = await asyncio.wait_for(asyncio.open_connection(host, port), 10)
    except (OSError, TimeoutError):
        reset(writer)
        return
    ways = [
        asyncio.create_task(pump(reader, up_writer, delay)),
        asyncio.create_task(pump(up_reader, writer, delay)),
    ]
    done, pending = await asyncio.wait(ways, return_when=asyncio.FIRST_EXCEPTION)
    failed = any(t.exception() for t in done)
    for task in pending:
        task.cancel()
    for end in (writer, up_writer):
        if failed:
            reset(end)
        else:
            end.close()


async def serve(port: int, seconds: float) -> None:
    delay = Delay(seconds)
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGUSR1, lambda: setattr(delay, "on", True))
    loop.add_signal_handler(signal.SIGUSR2, lambda: setattr(delay, "on", False))
    server = await asyncio.start_server(
        lambda r, w: handle(r, w, delay, port), "0.0.0.0", port, backlog=1024
    )
    print(f"listening on {port}, delay {seconds}s when on", flush=True)
    async with server:
        await server.serve_forever()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--delay", type=float, default=0.2)
    args = parser.parse_args()
    asyncio.run(serve(args.port, args.delay))


if __name__ == "__main__":
    main()
