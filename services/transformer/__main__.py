"""Transformer process: client dialect <-> canonical events, per session."""

from __future__ import annotations

import argparse

from services.transformer.transformer import Transformer
from shared.config import ConfigError, load_config
from shared.runtime import run


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="rtswitch transformer")
    parser.parse_args(argv)
    try:
        config = load_config()
    except ConfigError as exc:
        parser.exit(2, f"configuration error: {exc}\n")
    run(Transformer(config), config)


if __name__ == "__main__":
    main()
