"""Transformer process: client dialect <-> canonical events, per session."""

from __future__ import annotations

import argparse

from shared.config import ConfigError, load_config
from shared.startup import announce


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="rtswitch transformer")
    parser.parse_args(argv)
    try:
        config = load_config()
    except ConfigError as exc:
        parser.exit(2, f"configuration error: {exc}\n")
    announce("transformer", config.nats_url)  # before the heavy imports: the operator hears at once
    from services.transformer.transformer import Transformer
    from shared.runtime import run

    run(Transformer(config), config)


if __name__ == "__main__":
    main()
