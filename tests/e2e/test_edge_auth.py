"""The edge refuses bad upgrades with a status and a reason, and nothing reaches the bus."""

from __future__ import annotations

import asyncio
import json
import urllib.request
import uuid

import nats
import pytest
import websockets
from websockets.exceptions import InvalidStatus

from shared.session import session_key
from shared.store import Store

from ..conftest import Infra, RunningStack
from .helpers import ACCOUNT, API_KEY, GEMINI_WS_PATH, seed_url

pytestmark = pytest.mark.e2e

SEED_TOKEN = "905b80fa2656d8f34c00e077260fc8972502591c384c9413228dbcb19dc7e041"


def _bad_upgrades(base: str) -> list[tuple[str, dict[str, str], int]]:
    seed = f"{base}/?rs_accid={ACCOUNT}&rs_u_sessid=test-session-browser&rs_api=OPENAI&rs_core=GEMINI"
    return [
        (f"{seed}&rs_auth={SEED_TOKEN[:-2]}00", {}, 403),  # wrong hash
        (f"{base}/?rs_accid=nobody&rs_u_sessid=test-session-browser&rs_auth={SEED_TOKEN}&rs_api=OPENAI&rs_core=GEMINI",
         {}, 403),  # unknown account
        (seed, {}, 400),  # missing rs_auth
        (f"{seed}&rs_auth={SEED_TOKEN}&rs_core=NOPE".replace("rs_core=GEMINI&", ""), {}, 400),
        (f"{base}/v1/realtime?model=gpt-realtime", {}, 401),
        (f"{base}/v1/realtime?model=gpt-realtime", {"Authorization": "Bearer wrong"}, 403),
        (f"{base}{GEMINI_WS_PATH}", {}, 401),
        (f"{base}/nowhere", {}, 404),
    ]


async def test_bad_upgrades_are_refused_and_nothing_reaches_the_bus(running: RunningStack, infra: Infra) -> None:
    nc = await nats.connect(infra.nats_url)
    seen: list[str] = []

    async def record(msg: nats.aio.msg.Msg) -> None:
        seen.append(msg.subject)

    await nc.subscribe("rs.s.>", cb=record)
    await nc.subscribe("rs.assign.>", cb=record)
    await nc.flush()
    try:
        for url, headers, status in _bad_upgrades(running.ws_base):
            with pytest.raises(InvalidStatus) as info:
                async with websockets.connect(url, additional_headers=headers):
                    pass
            assert info.value.response.status_code == status, url
            assert info.value.response.body.strip(), "a refusal carries a short reason"
        # A good session afterwards: once its own first frame is on the bus, whatever the refused upgrades
        # could have published (before they were answered) would have arrived too. Only its traffic is there.
        good = f"after-{uuid.uuid4().hex[:8]}"
        good_subjects = f"rs.s.{session_key(ACCOUNT, good)}."
        async with websockets.connect(seed_url(running.ws_base, good, "OPENAI", "OPENAI")) as ws:
            await asyncio.wait_for(ws.recv(), 10)  # session.created: attached
            await ws.send(json.dumps({"type": "input_audio_buffer.clear"}))
            async with asyncio.timeout(10):
                while not any(subject.startswith(good_subjects) and subject.endswith(".cin") for subject in seen):
                    await asyncio.sleep(0.01)
        assert [s for s in seen if not (s.startswith(good_subjects) or s.startswith("rs.assign."))] == []
        assert sum(s.startswith("rs.assign.") for s in seen) == 2  # the good session's transformer and worker
    finally:
        await nc.close()


async def test_seed_vector_connects(running: RunningStack) -> None:
    url = seed_url(running.ws_base, "test-session-browser", "OPENAI", "GEMINI")
    assert f"rs_auth={SEED_TOKEN}" in url
    async with websockets.connect(url) as ws:
        assert json.loads(await asyncio.wait_for(ws.recv(), 10))["type"] == "session.created"


async def test_healthz_reports_bus_and_store(running: RunningStack) -> None:
    def get() -> dict:
        with urllib.request.urlopen(f"http://127.0.0.1:{running.edge_port}/healthz", timeout=5) as resp:
            return json.loads(resp.read())

    health = await asyncio.get_running_loop().run_in_executor(None, get)
    assert (health["status"], health["nats"], health["redis"]) == ("ok", "connected", "ok")


async def test_openai_sdk_key_is_account_and_secret(running: RunningStack) -> None:
    url = f"{running.ws_base}/v1/realtime?model=gpt-realtime"
    async with websockets.connect(url, additional_headers={"Authorization": f"Bearer {API_KEY}"}) as ws:
        assert json.loads(await asyncio.wait_for(ws.recv(), 10))["type"] == "session.created"


async def _record(infra: Infra, client_sid: str) -> dict[str, str]:
    async with Store.connect(infra.redis_url) as store:
        return (await store.snapshot(session_key(ACCOUNT, client_sid))).record


async def test_a_path_prefix_chooses_the_provider_and_a_model_prefix_is_stripped(
    running: RunningStack, infra: Infra
) -> None:
    """Clients that build their own URL (Pipecat appends ?model=) choose the provider by path."""
    client_sid = f"route-{uuid.uuid4().hex[:8]}"
    url = f"{running.ws_base}/gemini/v1/realtime?model=openai:gpt-realtime&rs_u_sessid={client_sid}"
    async with websockets.connect(url, additional_headers={"Authorization": f"Bearer {API_KEY}"}) as ws:
        assert json.loads(await asyncio.wait_for(ws.recv(), 10))["type"] == "session.created"
        record = await _record(infra, client_sid)
    assert (record["provider"], record["model"]) == ("gemini", "gpt-realtime")


async def test_a_gemini_setup_model_with_a_provider_prefix_chooses_the_provider(
    running: RunningStack, infra: Infra
) -> None:
    client_sid = f"route-{uuid.uuid4().hex[:8]}"
    url = f"{running.ws_base}{GEMINI_WS_PATH}?rs_u_sessid={client_sid}"
    async with websockets.connect(url, additional_headers={"x-goog-api-key": API_KEY}) as ws:
        await ws.send(json.dumps({"setup": {"model": "models/openai:gpt-realtime"}}))
        assert "setupComplete" in json.loads(await asyncio.wait_for(ws.recv(), 10))
        record = await _record(infra, client_sid)
    assert (record["provider"], record["model"]) == ("openai", "gpt-realtime")
