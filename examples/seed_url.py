"""One turn through the gateway on the seed URL, with nothing but the websockets package.

    pip install websockets
    rtswitch dev                      # in another terminal
    python examples/seed_url.py       # prints: answer: turn 1: Hello (from the fakes)

The seed URL carries the account, the session id and an HMAC of the session id keyed with the account's
secret. rs_api=OPENAI speaks the OpenAI beta event names, OPENAI_GA the GA ones, GEMINI the Gemini Live
messages; rs_core picks the provider. RS_URL (default ws://127.0.0.1:3000) is the edge, RS_CORE (default
OPENAI) the provider.
"""

import asyncio
import base64
import hashlib
import hmac
import json
import os
import uuid

import websockets

URL = os.environ.get("RS_URL", "ws://127.0.0.1:3000")
ACCOUNT, SECRET = "996-sdassds-86-asd", "secretkey-996"  # the dev account


async def main() -> None:
    session = f"example-{uuid.uuid4().hex[:12]}"  # the same id again would continue that conversation
    auth = hmac.new(SECRET.encode(), session.encode(), hashlib.sha256).hexdigest()
    core = os.environ.get("RS_CORE", "OPENAI").upper()
    url = f"{URL}/?rs_accid={ACCOUNT}&rs_u_sessid={session}&rs_auth={auth}&rs_api=OPENAI&rs_core={core}"
    async with websockets.connect(url) as ws:
        await ws.send(json.dumps({"type": "conversation.item.create", "item": {
            "type": "message", "role": "user", "content": [{"type": "input_text", "text": "Hello"}]}}))
        await ws.send(json.dumps({"type": "response.create"}))
        audio = bytearray()
        async for raw in ws:
            event = json.loads(raw)
            if event["type"] == "response.audio.delta":
                audio += base64.b64decode(event["delta"])  # 24 kHz 16-bit mono PCM
            elif event["type"] == "response.audio_transcript.done":
                print("answer:", event["transcript"])
            elif event["type"] == "error":
                raise SystemExit(f"error: {event['error']['code']}: {event['error']['message']}")
            elif event["type"] == "response.done":
                break
    print(f"audio: {len(audio)} bytes")


asyncio.run(main())
