"""Fake Gemini Live provider (BidiGenerateContent) for tests, benchmarks and chaos runs.

Run it with ``python -m services.fakes.gemini [--host H] [--port P] [--tls-cert C --tls-key K]``, or in-process with
``server = await services.fakes.gemini.start(port=0, ssl_context=ctx)`` … ``await server.close()``.
"""

from services.fakes.gemini.server import GeminiFake, GeminiSession, camelize, start

__all__ = ["GeminiFake", "GeminiSession", "camelize", "start"]
