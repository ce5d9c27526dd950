"""Provider-worker process: canonical events <-> provider protocol; owns the upstream sockets and keys."""

from __future__ import annotations

import argparse

from shared.config import ConfigError, load_config
from shared.providers import UnknownProvider, installed_providers
from shared.startup import announce


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="rtswitch provider-worker")
    parser.add_argument(
        "--provider",
        action="append",
        help=f"serve only these providers (repeatable); installed: {installed_providers()}",
    )
    args = parser.parse_args(argv)
    try:
        config = load_config()
        announce("provider-worker", config.nats_url)  # before the heavy imports: the operator hears at once
        from services.provider_worker.worker import ProviderWorker

        worker = ProviderWorker(config, args.provider)
    except (ConfigError, UnknownProvider) as exc:
        parser.exit(2, f"configuration error: {exc}\n")
    from shared.runtime import run

    run(worker, config)


if __name__ == "__main__":
    main()
