"""Protocol-faithful fake providers (OpenAI Realtime, Gemini Live). They import nothing of ``shared``.

``openai/`` and ``gemini/`` speak the two protocols; what they share is split by concern: ``wire`` (JSON,
base64, validation), ``audio``, ``vad``, ``conversation`` (items and the deterministic reply), ``knobs`` (fault
and behaviour knobs), ``session`` (the per-session writer and response pacing), ``server`` (the websockets server
and its HTTP side door) and ``control`` (an HTTP client for that side door). See docs/fakes.md.
"""
