"""A small TLS-terminating TCP proxy for test servers that only speak plain HTTP.

Run it as a separate process::

    python -m tests.support.tls_proxy --listen 127.0.0.1:PORT --backend 127.0.0.1:PORT \\
        --cert server.crt --key server.key

Each accepted TLS connection gets its own plain TCP connection to the backend; bytes are pumped
both ways. When the backend closes, the client side is shut down cleanly with a TLS close_notify
(pgBackRest on OpenSSL 3 reports an EOF without one as ``unexpected eof while reading``). When the
client closes, the backend connection is closed as well. SIGTERM/SIGINT stop the proxy.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
import ssl
import sys

log = logging.getLogger("tls_proxy")

CHUNK = 256 * 1024
CONNECT_TIMEOUT = 10.0
CLOSE_TIMEOUT = 5.0


def _host_port(value: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, got {value!r}")
    return host, int(port)


async def _pump(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Copy until EOF on ``reader``; then half-close ``writer`` when it supports that."""
    while data := await reader.read(CHUNK):
        writer.write(data)
        await writer.drain()
    if writer.can_write_eof():  # plain TCP; a TLS transport cannot half-close
        writer.write_eof()


async def _close(writer: asyncio.StreamWriter) -> None:
    """Close a stream (TLS: flush, send close_notify) and wait a bounded time for it to finish."""
    if writer.is_closing():
        with contextlib.suppress(Exception):
            await asyncio.wait_for(writer.wait_closed(), CLOSE_TIMEOUT)
        return
    writer.close()
    with contextlib.suppress(Exception):
        await asyncio.wait_for(writer.wait_closed(), CLOSE_TIMEOUT)


class Proxy:
    """Accept TLS connections on ``listen`` and forward their plaintext to ``backend``."""

    def __init__(self, backend: tuple[str, int]) -> None:
        self.backend = backend
        self.connections: set[asyncio.Task[None]] = set()

    async def handle(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        """Serve one client connection until either side is done."""
        task = asyncio.current_task()
        assert task is not None
        self.connections.add(task)
        peer = client_w.get_extra_info("peername")
        try:
            try:
                backend_r, backend_w = await asyncio.wait_for(
                    asyncio.open_connection(*self.backend), CONNECT_TIMEOUT
                )
            except (OSError, TimeoutError) as exc:
                log.error("%s: cannot connect to backend %s:%s: %s", peer, *self.backend, exc)
                return
            upstream = asyncio.create_task(_pump(client_r, backend_w))
            downstream = asyncio.create_task(_pump(backend_r, client_w))
            try:
                done, _ = await asyncio.wait(
                    {upstream, downstream}, return_when=asyncio.FIRST_COMPLETED
                )
                if upstream in done and upstream.exception() is None:
                    # The client finished sending (EOF / close_notify): let the backend finish
                    # its answer. A TLS close_notify closes our side at once, so this usually
                    # ends quickly with nothing more to forward.
                    await asyncio.wait({downstream}, timeout=CLOSE_TIMEOUT)
                for task_ in (upstream, downstream):
                    if task_.done() and not task_.cancelled() and task_.exception() is not None:
                        log.debug("%s: %r", peer, task_.exception())
            finally:
                for task_ in (upstream, downstream):
                    task_.cancel()
                await asyncio.gather(upstream, downstream, return_exceptions=True)
                await _close(backend_w)
        finally:
            await _close(client_w)  # sends close_notify
            self.connections.discard(task)


async def serve(listen: tuple[str, int], backend: tuple[str, int], cert: str, key: str) -> None:
    """Run the proxy until SIGTERM or SIGINT."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    proxy = Proxy(backend)
    server = await asyncio.start_server(
        proxy.handle,
        listen[0],
        listen[1],
        ssl=context,
        ssl_handshake_timeout=CONNECT_TIMEOUT,
        ssl_shutdown_timeout=CLOSE_TIMEOUT,
        reuse_address=True,
        limit=CHUNK,
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    log.info("listening on %s:%s (TLS), forwarding to %s:%s", *listen, *backend)
    async with server:
        await stop.wait()
        log.info("stopping")
        server.close()
        for task in list(proxy.connections):
            task.cancel()
        await asyncio.gather(*proxy.connections, return_exceptions=True)


def main(argv: list[str] | None = None) -> int:
    """Parse arguments and run the proxy."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--listen", type=_host_port, required=True, help="HOST:PORT (TLS)")
    parser.add_argument("--backend", type=_host_port, required=True, help="HOST:PORT (plain)")
    parser.add_argument("--cert", required=True, help="PEM certificate (chain) to present")
    parser.add_argument("--key", required=True, help="PEM private key")
    parser.add_argument("-v", "--verbose", action="store_true", help="log every connection error")
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(name)s %(levelname)s %(message)s",
        stream=sys.stderr,
    )
    asyncio.run(serve(args.listen, args.backend, args.cert, args.key))
    return 0


if __name__ == "__main__":
    sys.exit(main())
