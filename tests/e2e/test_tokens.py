"""Client tokens end to end: minted by the official OpenAI SDK's ``client.realtime.client_secrets.create``
on the client port (the HTTP front), then used as the Bearer, as the Gemini key (google-genai over TLS) and
as ``rs_auth`` on the seed URL; bindings, expiry and revocation by secret rotation."""

from __future__ import annotations

import asyncio
import json
import time
import uuid

import httpx2
import openai
import pytest
import redis.asyncio as aioredis
import websockets
from google import genai
from google.genai import types
from openai import AsyncOpenAI

from services.dev.stack import free_port
from shared.auth import mint_token
from shared.session import session_key

from ..conftest import RunningStack
from .db_edge import DbEdge, db_edge, until_status, upgrade_status
from .helpers import ACCOUNT, API_KEY, SECRET, TIMEOUT_S
from .tls_stack import TlsEdge, tls_edge

__all__ = ["db_edge", "tls_edge"]

pytestmark = pytest.mark.e2e

GEMINI_MODEL = "gemini-live-2.5-flash-preview"


def _minter(http_base: str, key: str = API_KEY, **kwargs: object) -> AsyncOpenAI:
    return AsyncOpenAI(api_key=key, base_url=f"{http_base}/v1", max_retries=0, **kwargs)  # type: ignore[arg-type]


async def test_sdk_mints_a_token_that_opens_a_session(running: RunningStack) -> None:
    http_base = f"http://127.0.0.1:{running.edge_port}"
    before = int(time.time())
    secret = await _minter(http_base).realtime.client_secrets.create(
        expires_after={"anchor": "created_at", "seconds": 120},
        session={"type": "realtime", "model": "gpt-realtime", "instructions": "be brief"},
    )
    assert secret.value.startswith("ek_") and before + 120 <= secret.expires_at <= int(time.time()) + 120
    assert secret.session.type == "realtime"  # the SDK's discriminated union parsed our echo

    # The token is the API key of a browser-side client (it never sees the account's secret).
    client = AsyncOpenAI(api_key=secret.value, websocket_base_url=f"{running.ws_base}/v1")
    async with client.realtime.connect(model="gpt-realtime") as conn:
        created = await asyncio.wait_for(conn.recv(), TIMEOUT_S)
        assert created.type == "session.created"
        await conn.session.update(session={"type": "realtime", "instructions": "token works"})
        async with asyncio.timeout(TIMEOUT_S):
            async for event in conn:
                if event.type == "session.updated":
                    assert event.session.instructions == "token works"
                    break

    # The same token on the seed URL (rs_auth), like the browser client would.
    seed = (f"{running.ws_base}/?rs_accid={ACCOUNT}&rs_u_sessid=tok-{uuid.uuid4().hex[:8]}"
            f"&rs_auth={secret.value}&rs_api=OPENAI&rs_core=OPENAI")
    assert await upgrade_status(seed) == 101


async def test_bound_token_opens_only_its_session_and_provider(
    running: RunningStack, redis_client: aioredis.Redis
) -> None:
    http_base = f"http://127.0.0.1:{running.edge_port}"
    session = f"bound-{uuid.uuid4().hex[:8]}"
    secret = await _minter(http_base).realtime.client_secrets.create(
        extra_body={"rs_u_sessid": session, "rs_core": "gemini"})
    assert secret.expires_at - time.time() == pytest.approx(600, abs=5)  # OpenAI's default lifetime
    bearer = {"Authorization": f"Bearer {secret.value}"}
    url = f"{running.ws_base}/v1/realtime?model=gpt-realtime"
    assert await upgrade_status(url, bearer) == 101  # no session named: the bound one, on the bound provider
    record = await redis_client.hgetall(f"rs:sess:{session_key(ACCOUNT, session)}")
    assert record[b"provider"] == b"gemini"
    assert await upgrade_status(f"{url}&rs_u_sessid=another", bearer) == 403
    assert await upgrade_status(f"{url}&rs_core=openai", bearer) == 403


async def test_refusals_in_openai_shape(running: RunningStack) -> None:
    http_base = f"http://127.0.0.1:{running.edge_port}"
    with pytest.raises(openai.BadRequestError) as too_long:
        await _minter(http_base).realtime.client_secrets.create(expires_after={"anchor": "created_at", "seconds": 7201})
    assert "between 10 and 7200" in str(too_long.value)
    with pytest.raises(openai.PermissionDeniedError):
        await _minter(http_base, f"{ACCOUNT}:wrong").realtime.client_secrets.create()
    token = (await _minter(http_base).realtime.client_secrets.create()).value
    with pytest.raises(openai.PermissionDeniedError):  # a token cannot mint tokens
        await _minter(http_base, token).realtime.client_secrets.create()
    with pytest.raises(openai.BadRequestError):
        await _minter(http_base).realtime.client_secrets.create(extra_body={"rs_core": "nope"})
    # Expired at the upgrade (a session it opened earlier would have gone on).
    expired = mint_token(SECRET, ACCOUNT, expires=int(time.time()) - 1)
    url = f"{running.ws_base}/v1/realtime?model=gpt-realtime"
    assert await upgrade_status(url, {"Authorization": f"Bearer {expired}"}) == 401
    # Other plain HTTP on the client port is unchanged, other methods are refused.
    async with httpx2.AsyncClient() as http:
        assert (await http.get(f"{http_base}/healthz")).json()["status"] == "ok"
        assert (await http.post(f"{http_base}/healthz", content=b"{}")).status_code == 405
        assert (await http.get(f"{http_base}/v1/realtime/client_secrets")).status_code == 405


async def test_rotation_revokes_tokens(db_edge: DbEdge) -> None:
    account = f"tok-{uuid.uuid4().hex[:8]}"
    key = db_edge.add(account)
    url = f"{db_edge.ws_base}/v1/realtime?model=gpt-realtime"
    await until_status(url, {"Authorization": f"Bearer {key}"}, 101)
    token = (await _minter(db_edge.http_base, key).realtime.client_secrets.create()).value
    assert await upgrade_status(url, {"Authorization": f"Bearer {token}"}) == 101
    db_edge.cli("rotate", account)
    await until_status(url, {"Authorization": f"Bearer {token}"}, 403)


async def test_token_over_tls_is_the_gemini_key(tls_edge: TlsEdge) -> None:
    async with httpx2.AsyncClient(verify=tls_edge.ssl_context) as http:
        minter = _minter(tls_edge.https_base, http_client=http)
        token = (await minter.realtime.client_secrets.create(extra_body={"rs_core": "gemini"})).value
    client = genai.Client(api_key=token, http_options=types.HttpOptions(
        base_url=tls_edge.https_base, api_version="v1beta", async_client_args={"ssl": tls_edge.ssl_context}))
    marker = uuid.uuid4().hex[:8]
    config = types.LiveConnectConfig(response_modalities=[types.Modality.AUDIO], output_audio_transcription={})
    async with client.aio.live.connect(model=GEMINI_MODEL, config=config) as session:
        await session.send_client_content(
            turns=types.Content(role="user", parts=[types.Part(text=f"hi {marker}")]), turn_complete=True)
        heard = []
        async with asyncio.timeout(TIMEOUT_S):
            async for msg in session.receive():
                content = msg.server_content
                if content is not None and content.output_transcription is not None:
                    heard.append(content.output_transcription.text or "")
    assert f"hi {marker}" in "".join(heard)


async def _raw_exchange(
    port: int, pieces: list[bytes], *, then: tuple[bytes, ...] | list[bytes] = (), until: bytes = b""
) -> bytes:
    """Writes ``pieces`` one by one; when ``until`` is given, waits for it and then writes ``then`` (what a
    client does after ``100 Continue``); returns what comes back up to the end of a 101's head, or
    everything until the edge closes."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    got = b""
    try:
        async with asyncio.timeout(TIMEOUT_S):
            for piece in pieces:
                writer.write(piece)
                await writer.drain()
            if until:
                got = await reader.readuntil(until)
            for piece in then:
                writer.write(piece)
                await writer.drain()
            while not (got.startswith(b"HTTP/1.1 101") and b"\r\n\r\n" in got):
                chunk = await reader.read(65536)
                if not chunk:
                    break
                got += chunk
            return got
    finally:
        writer.close()


async def test_front_reads_heads_and_bodies_in_pieces(running: RunningStack) -> None:
    body = b'{"expires_after": {"anchor": "created_at", "seconds": 60}}'
    head = (f"POST /v1/realtime/client_secrets HTTP/1.1\r\nHost: edge\r\nAuthorization: Bearer {API_KEY}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\nExpect: 100-continue\r\n\r\n").encode()
    got = await _raw_exchange(running.edge_port, [head[:7], head[7:40], head[40:]], then=[body[:5], body[5:]],
                              until=b"HTTP/1.1 100 Continue\r\n\r\n")
    assert got.startswith(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\n"), got[:120]
    assert b"Connection: close" in got and b'"value": "ek_' in got
    # A WebSocket upgrade whose head comes in pieces reaches websockets whole.
    upgrade = (f"GET /v1/realtime?model=gpt-realtime HTTP/1.1\r\nHost: edge\r\nUpgrade: websocket\r\n"
               f"Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
               f"Authorization: Bearer {API_KEY}\r\n\r\n").encode()
    got = await _raw_exchange(running.edge_port, [upgrade[:3], upgrade[3:60], upgrade[60:]])
    assert got.startswith(b"HTTP/1.1 101 Switching Protocols\r\n"), got[:120]
    assert b"s3pPLMBiTxaQ9kYGzzhZRbK+xOo=" in got  # RFC 6455's accept key for that nonce
    # Garbage and oversized heads are answered, not hung on.
    assert (await _raw_exchange(running.edge_port, [b"POST /x HTTP/1.1\r\nContent-Length: 999999\r\n\r\n"])
            ).startswith(b"HTTP/1.1 413")
    assert (await _raw_exchange(running.edge_port, [b"X" * 20_000])).startswith(b"HTTP/1.1 431")


async def test_front_keeps_permessage_deflate(running: RunningStack) -> None:
    """An edge with RS_CLIENT_COMPRESSION=deflate still negotiates it through the front, and its POST works."""
    port = free_port()
    proc = running.stack.start_instance(
        "edge", f"edge-deflate-{port}", env={"PORT": str(port), "RS_CLIENT_COMPRESSION": "deflate"})
    try:
        headers = {"Authorization": f"Bearer {API_KEY}"}
        async with websockets.connect(f"ws://127.0.0.1:{port}/v1/realtime?model=gpt-realtime",
                                      additional_headers=headers) as ws:
            assert json.loads(await asyncio.wait_for(ws.recv(), TIMEOUT_S))["type"] == "session.created"
            assert [e.name for e in ws.protocol.extensions] == ["permessage-deflate"]
        token = (await _minter(f"http://127.0.0.1:{port}").realtime.client_secrets.create()).value
        assert await upgrade_status(f"ws://127.0.0.1:{port}/v1/realtime", {"Authorization": f"Bearer {token}"}) == 101
    finally:
        proc.stop()
