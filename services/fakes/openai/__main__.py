"""``python -m services.fakes.openai``: run the fake OpenAI Realtime server until SIGINT/SIGTERM.

Prints the chosen port alone on the first stdout line (so ``--port 0`` is usable from scripts).
Knobs come from ``FAKE_*`` environment variables and ``/control`` (see ``services.fakes.knobs.Knobs``).
"""

from __future__ import annotations

import argparse
import asyncio
import logging

from services.fakes.openai.server import start
from services.fakes.server import serve_until_signal


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m services.fakes.openai", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port (printed on stdout)")
    parser.add_argument("--azure", action="store_true", help="serve Azure's /openai/realtime?api-version&deployment")
    return parser.parse_args(argv)


async def _serve(args: argparse.Namespace) -> None:
    server = await start(args.host, args.port, azure=args.azure)
    await serve_until_signal(server)


def main(argv: list[str] | None = None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    asyncio.run(_serve(_parse(argv)))


if __name__ == "__main__":
    main()
