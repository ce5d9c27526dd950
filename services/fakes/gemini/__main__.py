"""``python -m services.fakes.gemini``: run the fake Gemini Live server until SIGINT/SIGTERM.

Prints the chosen port alone on the first stdout line (so ``--port 0`` is usable from scripts). With
``--tls-cert``/``--tls-key`` it serves ``wss://`` (the google-genai SDK forces TLS).
Knobs come from ``FAKE_*`` environment variables and ``/control`` (see ``services.fakes.knobs.Knobs``).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import ssl

from services.fakes.gemini.server import start
from services.fakes.server import serve_until_signal


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m services.fakes.gemini", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port (printed on stdout)")
    parser.add_argument("--tls-cert", help="PEM certificate (chain) for wss://")
    parser.add_argument("--tls-key", help="PEM private key for --tls-cert (omit if the cert file holds it)")
    args = parser.parse_args(argv)
    if args.tls_key and not args.tls_cert:
        parser.error("--tls-key needs --tls-cert")
    return args


def _tls(args: argparse.Namespace) -> ssl.SSLContext | None:
    if not args.tls_cert:
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(args.tls_cert, args.tls_key)
    return context


async def _serve(args: argparse.Namespace) -> None:
    server = await start(args.host, args.port, ssl_context=_tls(args))
    await serve_until_signal(server)


def main(argv: list[str] | None = None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    asyncio.run(_serve(_parse(argv)))


if __name__ == "__main__":
    main()
