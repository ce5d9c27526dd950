"""One turn through the gateway with the official google-genai SDK (Gemini Live dialect), over TLS.

The SDK always connects with wss://, so the edge needs a certificate:

    RS_TLS_CERT=edge.crt RS_TLS_KEY=edge.key rtswitch dev       # in another terminal
    RS_CA_FILE=ca.pem python examples/gemini_sdk_tls.py         # prints: answer: turn 1: Hello

RS_URL (default https://127.0.0.1:3000) is the edge, RS_CA_FILE the CA that signed its certificate (unset:
the system's trust store), RS_CORE (default gemini) the provider behind it.
"""

import asyncio
import os
import ssl

from google import genai
from google.genai import types

URL = os.environ.get("RS_URL", "https://127.0.0.1:3000")
KEY = "996-sdassds-86-asd:secretkey-996"  # <account id>:<account secret>, the dev account

ssl_context = ssl.create_default_context(cafile=os.environ.get("RS_CA_FILE"))
config = types.LiveConnectConfig(
    response_modalities=[types.Modality.AUDIO],
    output_audio_transcription=types.AudioTranscriptionConfig(),  # the answer's words, besides its audio
)


async def main() -> None:
    client = genai.Client(api_key=KEY, http_options=types.HttpOptions(
        base_url=URL,
        api_version="v1beta",  # pin it: the SDK's default differs between versions
        headers={"X-RS-Core": os.environ.get("RS_CORE", "gemini")},  # the provider; optional
        async_client_args={"ssl": ssl_context},
    ))
    async with client.aio.live.connect(model="gemini-live-2.5-flash-preview", config=config) as session:
        await session.send_client_content(
            turns=types.Content(role="user", parts=[types.Part(text="Hello")]), turn_complete=True
        )
        audio, words = bytearray(), []
        async for message in session.receive():  # ends at the turn's turnComplete
            if message.data:
                audio += message.data  # 24 kHz 16-bit mono PCM
            content = message.server_content
            if content and content.output_transcription and content.output_transcription.text:
                words.append(content.output_transcription.text)
    print("answer:", "".join(words))
    print(f"audio: {len(audio)} bytes")


asyncio.run(main())
