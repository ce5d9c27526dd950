"""Protocol-faithful fake providers (OpenAI Realtime, Gemini Live). They import nothing of ``shared``."""
