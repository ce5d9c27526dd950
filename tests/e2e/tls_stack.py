"""A whole stack whose edge serves TLS (a trustme CA, a certificate for 127.0.0.1), for clients that only
speak wss:// (the google-genai SDK). Its own nats-server, so no other stack's services join its queue groups.
Import the fixture into a test module: ``from .tls_stack import tls_edge``.
"""

from __future__ import annotations

import ssl
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import trustme

from services.dev.stack import Stack, free_port

from ..conftest import Infra


@dataclass
class TlsEdge:
    port: int
    ca_file: Path  # the CA that signed the edge's certificate, PEM
    ssl_context: ssl.SSLContext

    @property
    def https_base(self) -> str:
        return f"https://127.0.0.1:{self.port}"


@pytest.fixture(scope="session")
def tls_edge(infra: Infra, tmp_path_factory: pytest.TempPathFactory) -> Iterator[TlsEdge]:
    workdir = tmp_path_factory.mktemp("tls_edge")
    ca = trustme.CA()
    issued = ca.issue_cert("127.0.0.1")
    cert, key, ca_file = workdir / "edge.crt", workdir / "edge.key", workdir / "ca.pem"
    issued.cert_chain_pems[0].write_to_path(str(cert))
    issued.private_key_pem.write_to_path(str(key))
    ca.cert_pem.write_to_path(str(ca_file))
    context = ssl.create_default_context(cafile=str(ca_file))
    stack = Stack(workdir)
    stack.env["REDIS_URL"] = infra.redis_url
    for var in ("OPENAI_API_KEY", "GEMINI_API_KEY", "AZURE_OPENAI_API_KEY"):
        stack.env.pop(var, None)  # tests never reach a real provider
    try:
        stack.start_nats()
        stack.start_fakes()
        port = free_port()
        stack.env.update({"PORT": str(port), "HOST": "127.0.0.1", "RS_TLS_CERT": str(cert), "RS_TLS_KEY": str(key)})
        for command in ("checkpoint", "transformer", "provider-worker", "edge"):
            stack.start_service(command)
        yield TlsEdge(port, ca_file, context)
    finally:
        stack.stop()
