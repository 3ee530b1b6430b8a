#!/usr/bin/env python3
"""A delaying TCP proxy for the fault-injection suite (this kernel has no tc netem).

Runs inside a node's network namespace. The harness redirects the namespace's outgoing
connections to the peer port to it (iptables nat OUTPUT REDIRECT); it finds each connection's
real destination with SO_ORIGINAL_DST, dials it with a socket marked so that the redirect skips
it, and forwards every chunk in each direction after `delay ± jitter` ms, in order (a chunk is
never sent before the one ahead of it). Exits by itself after --run-for seconds.

usage: delay_proxy.py PORT DELAY_MS JITTER_MS MARK RUN_FOR_S
"""

import asyncio
import random
import socket
import struct
import sys
import time

SO_ORIGINAL_DST = 80


def original_destination(sock):
    raw = sock.getsockopt(socket.SOL_IP, SO_ORIGINAL_DST, 16)
    port, packed = struct.unpack_from("!2xH4s", raw)
    return socket.inet_ntoa(packed), port


async def pump(reader, writer, delay, jitter):
    """Copies reader to writer, each chunk delayed; order kept."""
    queue = asyncio.Queue()

    async def send():
        while True:
            due, data = await queue.get()
            if data is None:
                break
            wait = due - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
            writer.write(data)
            await writer.drain()
        writer.close()

    sender = asyncio.create_task(send())
    last = 0.0
    try:
        while True:
            data = await reader.read(65536)
            if not data:
                break
            due = max(last, time.monotonic() + max(0.0, delay + random.uniform(-jitter, jitter)) / 1000)
            last = due
            await queue.put((due, data))
    except (ConnectionError, OSError):
        pass
    await queue.put((last, None))
    try:
        await sender
    except (ConnectionError, OSError):
        pass


async def handle(reader, writer, delay, jitter, mark):
    sock = writer.get_extra_info("socket")
    try:
        host, port = original_destination(sock)
        upstream = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        upstream.setsockopt(socket.SOL_SOCKET, socket.SO_MARK, mark)
        upstream.setblocking(False)
        await asyncio.get_running_loop().sock_connect(upstream, (host, port))
        up_reader, up_writer = await asyncio.open_connection(sock=upstream)
    except OSError:
        writer.close()
        return
    await asyncio.gather(pump(reader, up_writer, delay, jitter), pump(up_reader, writer, delay, jitter))


async def main():
    port, delay, jitter, mark, run_for = int(sys.argv[1]), float(sys.argv[2]), float(sys.argv[3]), int(sys.argv[4]), float(sys.argv[5])
    server = await asyncio.start_server(lambda r, w: handle(r, w, delay, jitter, mark), "0.0.0.0", port)
    print("ready", flush=True)
    async with server:
        await asyncio.sleep(run_for)


if __name__ == "__main__":
    asyncio.run(main())
