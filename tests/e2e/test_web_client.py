"""The browser client (services/edge/web/) in headless Chromium against the whole stack and both fakes.

Chromium's fake microphone plays a WAV we write (a 440 Hz tone, then silence, once): in each dialect the page
connects on the seed URL, streams the tone at the dialect's rate, the fake's server VAD ends the turn, and the
page shows the fake's answer ``turn 1: audio N.Ns`` and plays its audio. Then Switch: the control frame must go
out in the dialect's form; when the gateway carries the switch out, the timeline shows it and the next answer
comes from the other provider with the turn count continuing. Every request stays on the edge's origin, and the
console stays free of errors.

Driven by Playwright with the system Chromium (Debian's ``chromium`` package): Playwright's own browser
download is not used. Skipped only when no Chromium binary is found.
"""

from __future__ import annotations

import math
import os
import re
import shutil
import struct
import wave
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest

from tests.conftest import RunningStack

playwright_api = pytest.importorskip("playwright.async_api", reason="playwright is in the test extra")

pytestmark = pytest.mark.e2e

TIMEOUT_MS = 20_000
SWITCH_TIMEOUT_MS = 10_000  # a switch is a worker reattach: well under a second on the fakes
TONE_S = 1.0
# What the page sends for a 1.0 s tone is prefix padding + speech + the VAD's 500 ms silence: the fakes hear it as
# about 1.5-2 s. A page that declared 48 kHz audio as 16 kHz (or skipped resampling) would be heard 2-3x longer.
HEARD_S = (1.0, 2.6)
CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
SWITCH_FRAMES = {  # dialect (the page's option value) -> the switch control it must send
    "openai_ga": '{"type":"rs.switch"',
    "openai_beta": '{"type":"rs.switch"',
    "gemini": '{"rsSwitch":',
}


def chromium_path() -> str | None:
    explicit = os.environ.get("RS_CHROMIUM")
    if explicit:
        return explicit
    return next((found for name in CHROMIUM_NAMES if (found := shutil.which(name))), None)


def write_mic_wav(path: Path, rate: int = 48_000) -> None:
    """0.3 s silence, TONE_S of 440 Hz at half scale, 2.5 s silence: one spoken turn for a server VAD."""
    frames = bytearray()
    silence = struct.pack("<h", 0)
    frames += silence * int(0.3 * rate)
    for i in range(int(TONE_S * rate)):
        frames += struct.pack("<h", int(16000 * math.sin(2 * math.pi * 440 * i / rate)))
    frames += silence * int(2.5 * rate)
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(bytes(frames))


@pytest.fixture(scope="module")
def chromium() -> str:
    path = chromium_path()
    if path is None:
        names = ", ".join(CHROMIUM_NAMES)
        pytest.skip(f"no Chromium binary ({names} on PATH, or RS_CHROMIUM): apt-get install chromium")
    return path


async def _page_text(page: Any, selector: str) -> str:
    return str(await page.locator(selector).inner_text())


def _get(url: str) -> tuple[int, dict[str, str], bytes]:
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            return resp.status, dict(resp.headers), resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read()


def test_edge_serves_the_page_and_only_its_files(running: RunningStack) -> None:
    """No browser needed: GET / is the page, every file it names is served from /web/ with its type and the CSP."""
    from services.edge.web import CSP

    origin = f"http://127.0.0.1:{running.edge_port}"
    status, headers, body = _get(origin + "/")
    assert status == 200 and headers["Content-Type"].startswith("text/html"), (status, headers)
    assert headers["Content-Security-Policy"] == CSP
    page = body.decode()
    named = set(re.findall(r'(?:src|href)="(/[^"]*)"', page))
    for path in ("/web/app.js", "/web/worklet.js", "/web/audio-core.js"):  # the modules import these
        named.add(path)
    assert {"/web/app.js", "/web/style.css", "/web/favicon.svg"} <= named, named
    types = {".js": "text/javascript", ".css": "text/css", ".svg": "image/svg+xml"}
    for path in sorted(named):
        status, headers, body = _get(origin + path)
        assert status == 200 and body, path
        assert headers["Content-Type"].startswith(types[Path(path).suffix]), (path, headers["Content-Type"])
    assert not re.search(r"https?://", page), "the page must load nothing from elsewhere"
    assert _get(origin + "/web/../edge.py")[0] == 404
    assert _get(origin + "/web/missing.js")[0] == 404


@pytest.mark.parametrize("dialect", list(SWITCH_FRAMES))
async def test_web_client_turn_audio_and_switch(
    running: RunningStack, chromium: str, dialect: str, tmp_path: Path
) -> None:
    from playwright.async_api import async_playwright

    wav = tmp_path / "mic.wav"
    write_mic_wav(wav)
    origin = f"http://127.0.0.1:{running.edge_port}"
    ws_origin = f"ws://127.0.0.1:{running.edge_port}"
    screenshot = tmp_path / f"web-client-{dialect}.png"
    async with async_playwright() as pw:
        browser = await pw.chromium.launch(
            executable_path=chromium,
            args=[
                "--use-fake-device-for-media-stream",
                "--use-fake-ui-for-media-stream",
                f"--use-file-for-fake-audio-capture={wav}%noloop",
                "--autoplay-policy=no-user-gesture-required",
            ],
        )
        try:
            page = await browser.new_page(viewport={"width": 1280, "height": 860})
            console_errors: list[str] = []
            requests: list[str] = []
            sockets: list[str] = []
            page.on("console", lambda m: console_errors.append(m.text) if m.type == "error" else None)
            page.on("pageerror", lambda e: console_errors.append(f"page error: {e}"))
            page.on("request", lambda r: requests.append(r.url))
            page.on("websocket", lambda w: sockets.append(w.url))

            await page.goto(origin + "/")
            assert "dev mode: the secret is in this page" in await _page_text(page, "header")
            session = f"web-{dialect}-{os.getpid()}"
            await page.fill("#session", session)
            await page.select_option("#dialect", dialect)
            await page.select_option("#providerSelect", "openai")
            await page.click("#start")

            # Turn 1, spoken: the fake's answer in the transcript, its audio played through the jitter buffer.
            answer = page.locator("#transcript li.assistant", has_text="turn 1:")
            await answer.wait_for(timeout=TIMEOUT_MS)
            heard = re.search(r"turn 1: audio (\d+\.\d)s", await answer.inner_text())
            assert heard, await answer.inner_text()
            assert HEARD_S[0] <= float(heard.group(1)) <= HEARD_S[1], heard.group(0)
            # The fakes answer with 400 ms of 440 Hz: 9600 samples at 24 kHz, counted as the jitter buffer plays them.
            await page.wait_for_function("() => window.rsStats.playedSamples >= 9000", timeout=TIMEOUT_MS)
            stats = await page.evaluate("window.rsStats")
            assert stats["sentAudioFrames"] > 0 and stats["errors"] == 0, stats
            await page.locator("#timeline li.turn", has_text="turn 1 on openai: first audio").wait_for()

            await page.screenshot(path=str(tmp_path / f"web-client-{dialect}-turn1.png"))  # the one in docs/

            # Switch: the dialect's control frame goes out (seen in the page's own event log).
            await page.click("#switch")
            sent = page.locator("#log li.sent", has_text=SWITCH_FRAMES[dialect])
            await sent.wait_for(timeout=TIMEOUT_MS)
            assert '"provider":"GEMINI"' in await sent.inner_text()
            # The gateway carries it out: the timeline entry, the badge, and the next answer from gemini with the
            # turn count going on (gemini holds turn 1).
            switched = page.locator("#timeline li.switch", has_text="switched")
            await switched.first.wait_for(timeout=SWITCH_TIMEOUT_MS)
            outcome_text = await switched.first.locator("span").inner_text()
            assert "openai → gemini" in outcome_text, outcome_text
            assert await _page_text(page, "#provider") == "gemini"
            await page.fill("#text", "after the switch")
            await page.press("#text", "Enter")
            second = page.locator("#transcript li.assistant", has_text="turn 2: after the switch")
            await second.wait_for(timeout=TIMEOUT_MS)
            assert (await second.locator(".who").inner_text()) == "gemini"
            await page.screenshot(path=str(screenshot), full_page=True)
        finally:
            if not screenshot.exists() and "page" in locals():
                await page.screenshot(path=str(screenshot), full_page=True)
            if "page" in locals():
                print(f"timeline ({dialect}):\n{await _page_text(page, '#timeline')}")
            print(f"screenshot: {screenshot}")
            await browser.close()

    assert console_errors == [], console_errors
    assert requests and all(url.startswith(origin + "/") for url in requests), requests
    assert sockets and all(url.startswith(ws_origin + "/?") for url in sockets), sockets
    # Dev mode fetched a short-lived client token from the edge: the URL carries it, not a signature.
    assert all(parse_qs(urlsplit(url).query)["rs_auth"][0].startswith("ek_") for url in sockets), sockets


# -- the page's side of switches and barge-in, against a scripted edge ------------------------------------------------
# A tiny server in the test serves the same files (services.edge.web.ROUTES) and plays the gateway's part from a
# script, so the timeline, the provider badge and the truncate on barge-in are checked whatever the real gateway
# can do today. Frames are the ones our client codecs emit (shared/codecs/openai_client.py, gemini_client.py).

LONG_ANSWER_S = 3.0
BARGE_IN_AFTER_S = 0.6
OPENAI_AUDIO_DELTA = {"openai_ga": "response.output_audio.delta", "openai_beta": "response.audio.delta"}
OPENAI_TRANSCRIPT_DELTA = {
    "openai_ga": "response.output_audio_transcript.delta",
    "openai_beta": "response.audio_transcript.delta",
}
SEED_API = {"OPENAI_GA": "openai_ga", "OPENAI": "openai_beta", "GEMINI": "gemini"}


def _tone_b64(seconds: float, rate: int = 24_000) -> str:
    import base64

    samples = (int(8000 * math.sin(2 * math.pi * 440 * i / rate)) for i in range(int(seconds * rate)))
    return base64.b64encode(b"".join(struct.pack("<h", s) for s in samples)).decode()


class ScriptedEdge:
    """Serves the page; on the WebSocket, answers like the gateway would once switches work."""

    def __init__(self) -> None:
        self.received: list[dict[str, Any]] = []
        self.auth_ok: bool | None = None
        self.server: Any = None

    async def __aenter__(self) -> ScriptedEdge:
        from websockets.asyncio.server import serve

        self.server = await serve(self._session, "127.0.0.1", 0, process_request=self._http).__aenter__()
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.server.close()
        await self.server.wait_closed()

    @property
    def origin(self) -> str:
        return f"http://127.0.0.1:{self.server.sockets[0].getsockname()[1]}"

    async def _http(self, connection: Any, request: Any) -> Any:
        from services.edge.web import ROUTES

        if "upgrade" in request.headers.get("Connection", "").lower():
            return None
        handler = ROUTES.get(request.path.split("?", 1)[0])
        return await handler(None, connection) if handler else connection.respond(404, "not found\n")

    async def _recv(self, ws: Any) -> dict[str, Any]:
        import json

        while True:
            frame = json.loads(await ws.recv())
            if frame.get("type") != "input_audio_buffer.append" and "realtimeInput" not in frame:
                self.received.append(frame)
                return dict(frame)

    async def _session(self, ws: Any) -> None:
        import asyncio
        import json

        from shared.auth import seed_token
        from tests.e2e.helpers import SECRET

        query = {k: v[0] for k, v in parse_qs(urlsplit(ws.request.path).query).items()}
        self.auth_ok = query["rs_auth"] == seed_token(SECRET, query["rs_u_sessid"]) and query["rs_notices"] == "1"
        dialect = SEED_API[query["rs_api"]]
        send = lambda frame: ws.send(json.dumps(frame))  # noqa: E731
        if dialect == "gemini":
            assert "setup" in await self._recv(ws)
            await send({"setupComplete": {}})
            assert (await self._recv(ws))["rsSwitch"]["provider"] == "GEMINI"
            await send({"rsSwitched": {"from": "openai", "to": "gemini", "reason": "client", "gapMs": 42}})
            text = (await self._recv(ws))["clientContent"]["turns"][0]["parts"][0]["text"]
            await send({"serverContent": {"modelTurn": {"parts": [
                {"inlineData": {"mimeType": "audio/pcm;rate=24000", "data": _tone_b64(LONG_ANSWER_S)}}]}}})
            await send({"serverContent": {"outputTranscription": {"text": f"turn 2: {text}"}}})
            await asyncio.sleep(BARGE_IN_AFTER_S)  # the scripted user talks over the answer after a moment
            await send({"serverContent": {"interrupted": True}})
            await send({"serverContent": {"turnComplete": True}})
        else:
            await send({"type": "session.created", "session": {"rs": {"provider": "openai"}}})
            assert (await self._recv(ws))["type"] == "session.update"
            switch = await self._recv(ws)
            assert switch["type"] == "rs.switch" and switch["provider"] == "GEMINI", switch
            await send({"type": "switch", "name": "GEMINI"})
            await send({"type": "rs.switched", "from": "openai", "to": "gemini", "reason": "client", "gap_ms": 42})
            text = (await self._recv(ws))["item"]["content"][0]["text"]
            assert (await self._recv(ws))["type"] == "response.create"
            ids = {"response_id": "resp_1", "item_id": "item_1", "output_index": 0, "content_index": 0}
            await send({"type": "response.created", "response": {"id": "resp_1", "status": "in_progress"}})
            await send({"type": OPENAI_AUDIO_DELTA[dialect], **ids, "delta": _tone_b64(LONG_ANSWER_S)})
            await send({"type": OPENAI_TRANSCRIPT_DELTA[dialect], **ids, "delta": f"turn 2: {text}"})
            await asyncio.sleep(BARGE_IN_AFTER_S)
            await send({"type": "input_audio_buffer.speech_started", "audio_start_ms": 0, "item_id": "item_2"})
            await send({"type": "response.done", "response": {"id": "resp_1", "status": "cancelled"}})
            truncate = await self._recv(ws)
            assert truncate["type"] == "conversation.item.truncate", truncate
        await ws.wait_closed()


@pytest.mark.parametrize("dialect", list(SWITCH_FRAMES))
async def test_switch_announcements_and_barge_in(chromium: str, dialect: str, tmp_path: Path) -> None:
    from playwright.async_api import async_playwright

    async with ScriptedEdge() as edge, async_playwright() as pw:
        browser = await pw.chromium.launch(
            executable_path=chromium,
            args=["--use-fake-device-for-media-stream", "--use-fake-ui-for-media-stream"],
        )
        try:
            page = await browser.new_page(viewport={"width": 1280, "height": 860})
            console_errors: list[str] = []
            # The scripted edge has no token endpoint: the page's POST for a client token fails (the console line
            # names that URL) and the page signs in the page instead, which this test checks (auth_ok).
            page.on("console", lambda m: console_errors.append(m.text) if m.type == "error" and not m.location.get(
                "url", "").endswith("/v1/realtime/client_secrets") else None)
            page.on("pageerror", lambda e: console_errors.append(f"page error: {e}"))
            await page.goto(edge.origin + "/")
            await page.select_option("#dialect", dialect)
            await page.click("#start")
            await page.locator("#status", has_text="live").wait_for(timeout=TIMEOUT_MS)
            await page.click("#switch")
            entry = page.locator("#timeline li.switch", has_text="switched")
            await entry.wait_for(timeout=TIMEOUT_MS)
            assert "openai → gemini, reason client, gap 42 ms" in await entry.inner_text()
            assert await _page_text(page, "#provider") == "gemini"
            assert await page.evaluate("window.rsStats.switches") == 1

            await page.fill("#text", "hello")
            await page.press("#text", "Enter")
            answer = page.locator("#transcript li.assistant", has_text="turn 2: hello")
            await answer.wait_for(timeout=TIMEOUT_MS)
            assert await answer.locator(".who").inner_text() == "gemini"
            await page.locator("#timeline li.turn", has_text="turn 1 on gemini: first audio").wait_for()
            # Barge-in: playback stops at once with most of the 3 s answer unplayed, and stays stopped.
            await page.wait_for_function("() => window.rsStats.interruptions === 1", timeout=TIMEOUT_MS)
            await page.wait_for_function("() => window.rsStats.bufferedMs === 0", timeout=TIMEOUT_MS)
            played = await page.evaluate("window.rsStats.playedSamples")
            assert 0 < played < 24_000 * (LONG_ANSWER_S - 1), played
        finally:
            await page.screenshot(path=str(tmp_path / f"scripted-{dialect}.png"), full_page=True)
            await browser.close()

    assert edge.auth_ok, "the page's dev-mode rs_auth is not HMAC-SHA256(secret, session id), or rs_notices=1 missing"
    if dialect != "gemini":
        truncate = edge.received[-1]
        assert truncate["item_id"] == "item_1" and truncate["content_index"] == 0, truncate
        assert 0 < truncate["audio_end_ms"] < (LONG_ANSWER_S - 1) * 1000, truncate
    assert console_errors == [], console_errors


async def test_page_resampler_keeps_pitch_and_length_and_stops_aliasing(chromium: str) -> None:
    """audio-core.js's Resampler, run in Chromium in 128-sample blocks as the worklet feeds it: 48 kHz -> 16 kHz and
    24 kHz keep a 440 Hz tone's pitch and duration, 24 kHz -> 48 kHz (playback) too, and a 12 kHz tone (above the
    16 kHz output's Nyquist) is filtered out instead of folding back as 4 kHz."""
    import numpy as np

    from shared.audio import dominant_hz

    script = """async ([from, to, hz, seconds]) => {
        const { Resampler, floatToPcm16 } = await import("/web/audio-core.js");
        const r = new Resampler(from, to);
        const n = Math.round(from * seconds), out = [];
        for (let start = 0; start < n; start += 128) {
            const block = new Float32Array(Math.min(128, n - start));
            for (let i = 0; i < block.length; i++) block[i] = 0.5 * Math.sin(2 * Math.PI * hz * (start + i) / from);
            out.push(...floatToPcm16(r.process(block)));
        }
        return out;
    }"""
    async with ScriptedEdge() as edge, async_playwright_browser(chromium) as browser:
        page = await browser.new_page()
        await page.goto(edge.origin + "/")
        for source, target in ((48_000, 16_000), (48_000, 24_000), (44_100, 16_000), (24_000, 48_000)):
            pcm = np.array(await page.evaluate(script, [source, target, 440, 1.0]), dtype="<i2")
            assert abs(len(pcm) - target) <= 2, (source, target, len(pcm))
            assert abs(dominant_hz(pcm.tobytes(), target) - 440) < 1, (source, target)
        loud = np.array(await page.evaluate(script, [48_000, 16_000, 440, 1.0]), dtype=np.float64)
        folded = np.array(await page.evaluate(script, [48_000, 16_000, 12_000, 1.0]), dtype=np.float64)
        rms = lambda x: float(np.sqrt(np.mean(x[100:] ** 2)))  # noqa: E731
        assert rms(folded) < rms(loud) / 10, (rms(folded), rms(loud))  # at least 20 dB down


def async_playwright_browser(chromium: str) -> Any:
    import contextlib

    from playwright.async_api import async_playwright

    @contextlib.asynccontextmanager
    async def browser() -> Any:
        async with async_playwright() as pw:
            launched = await pw.chromium.launch(executable_path=chromium)
            try:
                yield launched
            finally:
                await launched.close()

    return browser()
