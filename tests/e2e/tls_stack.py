"""A whole stack whose edge serves TLS (a trustme CA, a certificate for 127.0.0.1), for clients that only
speak wss:// (the google-genai SDK). Its own nats-server, so no other stack's services join its queue groups.
Import the fixture into a test module: ``from .tls_stack import tls_edge``. Stacks of other shapes take
``issue_edge_cert`` (RS_TLS_CERT/RS_TLS_KEY for their edge) and ``genai_client`` (the SDK pointed at it).
"""

from __future__ import annotations

import ssl
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import trustme
from google import genai
from google.genai import types

from services.dev.stack import Stack, free_port

from ..conftest import Infra
from .helpers import API_KEY


@dataclass
class TlsEdge:
    port: int
    ca_file: Path  # the CA that signed the edge's certificate, PEM
    ssl_context: ssl.SSLContext

    @property
    def https_base(self) -> str:
        return f"https://127.0.0.1:{self.port}"


@dataclass
class EdgeCert:
    cert: Path  # the edge's certificate (for 127.0.0.1) and key, PEM: RS_TLS_CERT / RS_TLS_KEY
    key: Path
    ca_file: Path
    ssl_context: ssl.SSLContext  # a client context that trusts the CA

    @property
    def env(self) -> dict[str, str]:
        return {"RS_TLS_CERT": str(self.cert), "RS_TLS_KEY": str(self.key)}


def issue_edge_cert(workdir: Path) -> EdgeCert:
    """A fresh CA (trustme) and a certificate for 127.0.0.1 signed by it, written into ``workdir``."""
    ca = trustme.CA()
    issued = ca.issue_cert("127.0.0.1")
    cert, key, ca_file = workdir / "edge.crt", workdir / "edge.key", workdir / "ca.pem"
    issued.cert_chain_pems[0].write_to_path(str(cert))
    issued.private_key_pem.write_to_path(str(key))
    ca.cert_pem.write_to_path(str(ca_file))
    return EdgeCert(cert, key, ca_file, ssl.create_default_context(cafile=str(ca_file)))


def genai_client(
    port: int, ssl_context: ssl.SSLContext, *, api_key: str = API_KEY, headers: dict[str, str] | None = None
) -> genai.Client:
    """The google-genai SDK pointed at a TLS edge on ``port``: it always dials wss://<base_url host>."""
    return genai.Client(api_key=api_key, http_options=types.HttpOptions(
        base_url=f"https://127.0.0.1:{port}", api_version="v1beta", headers=headers,
        async_client_args={"ssl": ssl_context},
    ))


@pytest.fixture(scope="session")
def tls_edge(infra: Infra, tmp_path_factory: pytest.TempPathFactory) -> Iterator[TlsEdge]:
    workdir = tmp_path_factory.mktemp("tls_edge")
    issued = issue_edge_cert(workdir)
    stack = Stack(workdir)
    stack.env["REDIS_URL"] = infra.redis_url
    for var in ("OPENAI_API_KEY", "GEMINI_API_KEY", "AZURE_OPENAI_API_KEY"):
        stack.env.pop(var, None)  # tests never reach a real provider
    try:
        stack.start_nats()
        stack.start_fakes()
        port = free_port()
        stack.env.update({"PORT": str(port), "HOST": "127.0.0.1", **issued.env})
        for command in ("checkpoint", "transformer", "provider-worker", "edge"):
            stack.start_service(command)
        yield TlsEdge(port, issued.ca_file, issued.ssl_context)
    finally:
        stack.stop()
