"""Holds a loopback-only network namespace for the Ray tests (run it under `unshare -n`): brings `lo` up, then
forwards each Unix socket FOLDER/<port>.sock to 127.0.0.1:<port> inside the namespace, so that the tests' HTTP
clients reach servers that no other network can, until SIGTERM. Other processes join it with nsenter."""
from __future__ import annotations

import asyncio
import fcntl
import functools
import signal
import socket
import struct
import sys
from pathlib import Path

SIOCGIFFLAGS, SIOCSIFFLAGS, IFF_UP = 0x8913, 0x8914, 0x1
IFREQ = "16sH22x"  # struct ifreq: the interface's name, then its flags (40 bytes in all)


def loopback_up() -> None:
    """`ip link set lo up`, without needing iproute2."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        flags = struct.unpack(IFREQ, fcntl.ioctl(sock, SIOCGIFFLAGS, struct.pack(IFREQ, b"lo", 0)))[1]
        fcntl.ioctl(sock, SIOCSIFFLAGS, struct.pack(IFREQ, b"lo", flags | IFF_UP))


async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Copy one direction of a connection until it ends."""
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except ConnectionError:
        pass
    finally:
        writer.close()


async def forward(port: int, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """One client connection, to the server on `port` inside the namespace."""
    try:
        upstream_reader, upstream_writer = await asyncio.open_connection("127.0.0.1", port)
    except OSError:
        writer.close()
        return
    await asyncio.gather(pipe(reader, upstream_writer), pipe(upstream_reader, writer))


async def main(folder: Path, ports: list[int]) -> None:
    loopback_up()
    for port in ports:
        await asyncio.start_unix_server(functools.partial(forward, port), path=str(folder / f"{port}.sock"))
    stop = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        asyncio.get_running_loop().add_signal_handler(signum, stop.set)
    (folder / "ready").touch()
    await stop.wait()


if __name__ == "__main__":
    asyncio.run(main(Path(sys.argv[1]), [int(port) for port in sys.argv[2:]]))
