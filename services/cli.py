"""``rtswitch``: one console script for every process and for the dev stack."""

from __future__ import annotations

import importlib
import os
import signal
import sys
import time

from services.dev.stack import SERVICE_MODULES, Stack

__all__ = ["main"]

USAGE = """usage: rtswitch COMMAND [options]

commands:
  dev [--port P]          embedded NATS + Redis + every service (+ fake providers when keys are absent)
  edge                    client WebSockets, auth, HTTP            (env: HOST, PORT, NATS_URL, REDIS_URL, ...)
  transformer             client dialect <-> canonical events
  provider-worker         canonical events <-> provider            (env: OPENAI_API_KEY, GEMINI_API_KEY, ...)
  checkpoint              session stream -> conversation log in Redis
  fake-openai --port P    protocol-faithful fake OpenAI Realtime server
  fake-gemini --port P    protocol-faithful fake Gemini Live server
"""


def main(argv: list[str] | None = None) -> None:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help", "help"):
        print(USAGE)
        return
    command, rest = args[0], args[1:]
    if command == "dev":
        dev(rest)
        return
    if command == "call":
        from services.call import main as call_main

        call_main(rest)
        return
    module = SERVICE_MODULES.get(command)
    if module is None:
        print(f"rtswitch: unknown command {command!r}\n\n{USAGE}", file=sys.stderr)
        raise SystemExit(2)
    importlib.import_module(f"{module}.__main__").main(rest)


def dev(argv: list[str]) -> None:
    import argparse

    from shared.auth import seed_token
    from shared.config import ConfigError, load_config

    parser = argparse.ArgumentParser(prog="rtswitch dev")
    parser.add_argument("--port", type=int, help="edge port (default: PORT or 3000)")
    parser.add_argument("--host", help="edge host (default: HOST or 127.0.0.1)")
    args = parser.parse_args(argv)
    try:
        config = load_config(port=args.port, host=args.host)
    except ConfigError as exc:
        parser.exit(2, f"configuration error: {exc}\n")

    stack = Stack()
    stopping = False

    def on_signal(signum: int, frame: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    try:
        env_nats, env_redis = os.environ.get("NATS_URL"), os.environ.get("REDIS_URL")
        print("starting nats-server ..." if not env_nats else f"using NATS at {env_nats}", flush=True)
        if not env_nats:
            stack.start_nats()
        print("starting redis-server ..." if not env_redis else f"using Redis at {env_redis}", flush=True)
        if not env_redis:
            stack.start_redis()
        stack.env["PORT"] = str(config.port)
        stack.env["HOST"] = config.host
        # Providers without a key get a fake; a provider with a key is the real one.
        stack.start_fakes(only_missing=True)
        if stack.fake_ports:
            print(f"no key for {', '.join(sorted(stack.fake_ports))}: started fake providers for them", flush=True)
        for command in ("checkpoint", "transformer", "provider-worker", "edge"):
            stack.start_service(command)
        account, secret = next(iter(config.accounts.items()))
        sid = "test-session-browser"
        token = seed_token(secret, sid)
        base = f"ws://{config.host}:{config.port}"
        print(
            "\nrealtime-switch is running\n"
            f"  edge:     {base}  (healthz: http://{config.host}:{config.port}/healthz)\n"
            f"  seed URL: {base}/?rs_accid={account}&rs_u_sessid={sid}&rs_auth={token}&rs_api=OPENAI&rs_core=OPENAI\n"
            f"  openai SDK: AsyncOpenAI(api_key='{account}:<secret>', websocket_base_url='{base}/v1')\n"
            f"  logs:     {stack.workdir}\n"
            "Ctrl-C stops everything.",
            flush=True,
        )
        while not stopping:
            for proc in stack.procs:
                if not proc.alive():
                    print(f"{proc.name} exited ({proc.popen.returncode}); stopping. Last lines:\n{proc.tail()}")
                    stopping = True
                    break
            time.sleep(0.2)
    finally:
        print("stopping ...", flush=True)
        stack.stop()
        print("stopped", flush=True)


if __name__ == "__main__":
    main()
