"""One turn through the gateway with the official openai SDK, OpenAI Realtime beta dialect.

    pip install "openai[realtime]"
    rtswitch dev                        # in another terminal
    python examples/openai_beta.py      # prints: answer: turn 1: Hello (from the fakes)

Same as openai_ga.py but `client.beta.realtime` (it sends the `OpenAI-Beta: realtime=v1` header), so the
gateway speaks the beta event names: response.audio.delta instead of response.output_audio.delta.
RS_URL (default ws://127.0.0.1:3000) is the edge, RS_CORE (default openai) the provider behind it.
"""

import asyncio
import base64
import os

from openai import AsyncOpenAI

URL = os.environ.get("RS_URL", "ws://127.0.0.1:3000")
KEY = "996-sdassds-86-asd:secretkey-996"  # <account id>:<account secret>, the dev account


async def main() -> None:
    client = AsyncOpenAI(api_key=KEY, websocket_base_url=f"{URL}/v1")
    extra = {"rs_core": os.environ.get("RS_CORE", "openai")}
    async with client.beta.realtime.connect(model="gpt-4o-realtime-preview", extra_query=extra) as conn:
        await conn.conversation.item.create(
            item={"type": "message", "role": "user", "content": [{"type": "input_text", "text": "Hello"}]}
        )
        await conn.response.create()
        audio = bytearray()
        async for event in conn:
            if event.type == "response.audio.delta":
                audio += base64.b64decode(event.delta)  # 24 kHz 16-bit mono PCM
            elif event.type == "response.audio_transcript.done":
                print("answer:", event.transcript)
            elif event.type == "error":
                raise SystemExit(f"error: {event.error.code}: {event.error.message}")
            elif event.type == "response.done":
                break
    print(f"audio: {len(audio)} bytes")


asyncio.run(main())
