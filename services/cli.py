"""``rtswitch``: one console script for every process and for the dev stack."""

from __future__ import annotations

import errno
import importlib
import os
import shutil
import signal
import sys
import time

from services.dev.stack import SERVICE_MODULES, Stack, bind_error, plan_providers
from shared.auth import seed_token
from shared.config import Config, ConfigError, load_config, read_dotenv

__all__ = ["main"]

USAGE = """usage: rtswitch COMMAND [options]

commands:
  dev [--port P] [--host H] [--no-fakes] [--logs DIR] [--ha] [--json-logs]
                          embedded NATS + Redis + every service (+ fake providers when keys are absent);
                          --ha: a 3-node NATS cluster and Redis with a replica and 3 Sentinels
  bench [options]         the load bench (same tables and JSON as python -m ops.bench.run; bench --help)
  bench --peer litellm    ours against LiteLLM's proxy in the same run (its own cached venv; bench --help)
  call TEXT... [--dialect openai|openai-beta|gemini] [--provider openai|gemini] [--url URL] [--wav F] [--out F]
                          one conversation through the gateway, printed with timings (rtswitch call --help)
  accounts add|list|rotate|disable|limits|defaults ...
                          accounts in Redis (REDIS_URL) for edges with ENABLE_DB=true (rtswitch accounts -h)
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
    if command == "bench":
        raise SystemExit(bench(rest))
    if command == "call":
        from services.call import main as call_main

        call_main(rest)
        return
    if command == "accounts":
        importlib.import_module("services.accounts_cli").main(rest)
        return
    module = SERVICE_MODULES.get(command)
    if module is None:
        print(f"rtswitch: unknown command {command!r}\n\n{USAGE}", file=sys.stderr)
        raise SystemExit(2)
    importlib.import_module(f"{module}.__main__").main(rest)


DEV_EPILOG = """\
Provider keys (OPENAI_API_KEY, GEMINI_API_KEY, AZURE_OPENAI_API_KEY) come from the environment or from .env
in the current directory (the environment wins). A provider with a key is the real one; every provider
without a key is served by a fake (answers "turn N: <your text>" and a 440 Hz tone) unless --no-fakes.
The startup summary says which providers are real. NATS_URL / REDIS_URL (environment or .env): use those
servers instead of starting embedded ones. Logs go to --logs (default: a new rtswitch-dev-* folder in the
temp directory) and are kept after exit.
"""


def dev(argv: list[str]) -> None:
    import argparse
    import tempfile
    from pathlib import Path

    parser = argparse.ArgumentParser(
        prog="rtswitch dev", description="Run the whole gateway on this machine, with fakes for providers "
        "without a key.", epilog=DEV_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--port", type=int, help="edge port (default: PORT or 3000)")
    parser.add_argument("--host", help="edge host (default: HOST or 127.0.0.1; 0.0.0.0 for every interface)")
    parser.add_argument("--no-fakes", action="store_true",
                        help="start no fake providers: a provider without a key refuses its sessions")
    parser.add_argument("--logs", type=Path, metavar="DIR",
                        help="folder for the process logs, kept after exit (default: a new folder in the temp dir)")
    parser.add_argument("--ha", action="store_true",
                        help="a 3-node nats-server cluster (JetStream R3) and Redis primary + replica + 3 Sentinels, "
                        "all on loopback, instead of one of each")
    parser.add_argument("--json-logs", action="store_true",
                        help="services log JSON lines (as in production) instead of the human format")
    args = parser.parse_args(argv)
    try:
        dotenv = read_dotenv(Path(".env"))
        config = load_config(port=args.port, host=args.host)
    except ConfigError as exc:
        parser.exit(2, f"configuration error: {exc}\n")
    problem = bind_error(config.host, config.port)
    if problem is not None:
        if problem.errno == errno.EADDRINUSE:
            parser.exit(1, f"port {config.port} is taken, use --port\n")
        parser.exit(1, f"cannot listen on {config.host}:{config.port}: {problem.strerror}, use --host/--port\n")

    # .env reaches every child as if it were the environment (the environment wins), so a key in .env makes
    # its provider real exactly like an exported one.
    base_env = {**dotenv, **os.environ}
    logs = args.logs or Path(tempfile.gettempdir()) / f"rtswitch-dev-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}"
    stack = Stack(logs, base_env=base_env, auto_switch=True)
    stopping = False

    def on_signal(signum: int, frame: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    try:
        stack.env.setdefault("RS_LOG_FORMAT", "json" if args.json_logs else "text")
        env_nats = base_env.get("NATS_URL")
        env_redis = base_env.get("REDIS_SENTINELS") or base_env.get("REDIS_URL")
        print(f"using NATS at {env_nats}" if env_nats else
              "starting a 3-node nats-server cluster ..." if args.ha else "starting nats-server ...", flush=True)
        if not env_nats:
            stack.start_nats_cluster() if args.ha else stack.start_nats()
        print(f"using Redis at {env_redis}" if env_redis else
              "starting redis-server primary + replica + 3 sentinels ..." if args.ha else "starting redis-server ...",
              flush=True)
        if not env_redis:
            stack.start_redis_ha() if args.ha else stack.start_redis()
        stack.env["PORT"] = str(config.port)
        stack.env["HOST"] = config.host
        if not args.no_fakes:  # providers without a key get a fake; a provider with a key is the real one
            stack.start_fakes(only_missing=True)
        if stack.fake_ports:
            print(f"no key for {', '.join(sorted(stack.fake_ports))}: started fake providers for them", flush=True)
        for command in ("checkpoint", "transformer", "provider-worker", "edge"):
            stack.start_service(command)
        print(summary(config, stack, dotenv, fakes=not args.no_fakes), flush=True)
        while not stopping:
            for proc in stack.procs:
                if not proc.alive():
                    print(f"{proc.name} exited ({proc.popen.returncode}); stopping. Last lines:\n{proc.tail()}")
                    stopping = True
                    break
            time.sleep(0.2)
    except FileNotFoundError as exc:  # no nats-server / redis-server: the message says what to install
        print(f"rtswitch dev: {exc}", file=sys.stderr, flush=True)
        stopping = True
        raise SystemExit(1) from None
    finally:
        print("stopping ...", flush=True)
        stack.stop()
        # The bus's stream store is state, not a log: the next run starts clean.
        shutil.rmtree(stack.workdir / "jetstream", ignore_errors=True)
        for node in stack.nats_cluster:
            shutil.rmtree(stack.workdir / f"{node.name}-js", ignore_errors=True)
        print(f"stopped; logs kept in {stack.workdir}", flush=True)


def bench(argv: list[str], *, out: object = None) -> int:
    """``python -m ops.bench.run`` as a child (ops sits above services: nothing here imports it), its tables
    and JSON unchanged on stdout; its progress lines on stderr, each prefixed with the elapsed time, and on a
    terminal a status line under them that keeps ticking while a phase runs."""
    import importlib.util
    import subprocess
    import threading

    err = out if out is not None else sys.stderr
    if importlib.util.find_spec("ops.bench.run") is None:
        print("rtswitch bench: the bench lives in the source tree (ops/bench); run it from a checkout", file=err)
        return 2
    if argv[:1] in (["-h"], ["--help"]):
        return subprocess.call([sys.executable, "-m", "ops.bench.run", *argv])
    tty = bool(getattr(err, "isatty", lambda: False)())
    clear = "\r\033[K" if tty else ""  # erase the status line before a progress line replaces it
    start = time.monotonic()
    last = ["starting the stack"]
    lock = threading.Lock()

    def stamp() -> str:
        seconds = int(time.monotonic() - start)
        return f"[bench {seconds // 60:02d}:{seconds % 60:02d}]"

    child = subprocess.Popen([sys.executable, "-m", "ops.bench.run", *argv], stderr=subprocess.PIPE, text=True)
    done = threading.Event()

    def ticker() -> None:  # the status line: elapsed time and the last thing the bench said
        while not done.wait(1.0):
            with lock:
                print(f"{clear}{stamp()} {last[0][:100]}", end="", file=err, flush=True)

    if tty:
        threading.Thread(target=ticker, daemon=True).start()
    assert child.stderr is not None
    for line in child.stderr:
        with lock:
            last[0] = line.rstrip()
            print(f"{clear}{stamp()} {last[0]}", file=err, flush=True)
    rc = child.wait()
    done.set()
    with lock:
        print(f"{clear}{stamp()} bench finished (exit {rc})", file=err, flush=True)
    return rc


def summary(config: Config, stack: Stack, dotenv: dict[str, str], *, fakes: bool) -> str:
    """The block ``rtswitch dev`` prints once everything is up: addresses with the right scheme, providers."""
    tls = bool(config.tls_cert)
    ws, http = ("wss", "https") if tls else ("ws", "http")
    host = "127.0.0.1" if config.host in ("0.0.0.0", "", "::") else config.host
    base = f"{ws}://{host}:{config.port}"
    account, secret = next(iter(config.accounts.items()))
    sid = "test-session-browser"
    token = seed_token(secret, sid)
    from_dotenv = {k for k in dotenv if k not in os.environ}
    providers = plan_providers(stack.env, from_dotenv, stack.fake_ports, fakes=fakes)
    lines = [
        "",
        "realtime-switch is running",
        f"  edge:       {base}  (healthz: {http}://{host}:{config.port}/healthz)",
        f"  web client: {http}://{host}:{config.port}/",
        f"  seed URL:   {base}/?rs_accid={account}&rs_u_sessid={sid}&rs_auth={token}&rs_api=OPENAI&rs_core=OPENAI",
        f"  openai SDK: AsyncOpenAI(api_key='{account}:<secret>', websocket_base_url='{base}/v1')",
        f"  try it:     rtswitch call \"Hello\" --url {base}" + ("  (trust the edge's certificate: SSL_CERT_FILE)"
                                                            if tls else ""),
        *([f"  nats:       cluster of {len(stack.nats_cluster)}: {stack.nats_url}"] if stack.nats_cluster else []),
        *([f"  redis:      primary + replica, Sentinels at {stack.env['REDIS_SENTINELS']}"]
          if stack.sentinel_ports else []),
        "  providers:",
        *(f"    {p.line}" for p in providers),
    ]
    if any(p.mode == "fake" for p in providers):
        lines.append('  fakes answer "turn N: <your text>" and a 440 Hz tone; they hear audio as its length')
    lines += [f"  logs:       {stack.workdir}  (kept after exit)", "Ctrl-C stops everything."]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
