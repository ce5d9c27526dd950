"""Edge process: client WebSockets, auth, HTTP. Configured by the environment (see shared.config)."""

from __future__ import annotations

import argparse

from shared.config import ConfigError, load_config
from shared.startup import announce


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="rtswitch edge")
    parser.add_argument("--host")
    parser.add_argument("--port", type=int)
    parser.add_argument("--tls-cert", help="PEM certificate: serve wss:// (the google-genai SDK insists on it)")
    parser.add_argument("--tls-key")
    args = parser.parse_args(argv)
    try:
        config = load_config(host=args.host, port=args.port, tls_cert=args.tls_cert, tls_key=args.tls_key)
    except ConfigError as exc:
        parser.exit(2, f"configuration error: {exc}\n")
    announce("edge", config.nats_url)  # before the heavy imports: the operator hears at once
    from services.edge.edge import Edge
    from shared.runtime import run

    run(Edge(config), config)


if __name__ == "__main__":
    main()
