"""Fake OpenAI Realtime provider (GA + beta, optional Azure routing) for tests, benchmarks and chaos runs.

Run it with ``python -m services.fakes.openai [--host H] [--port P] [--azure]``, or in-process with
``server = await services.fakes.openai.start(port=0)`` … ``await server.close()``.
"""

from services.fakes.openai.server import BETA, GA, OpenAIFake, OpenAISession, start

__all__ = ["BETA", "GA", "OpenAIFake", "OpenAISession", "start"]
