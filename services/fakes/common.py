"""The side-door client helpers under their old import path.

The fakes' code lives in ``services.fakes.{wire,audio,vad,conversation,knobs,session,server,control}``. End-to-end
tests import ``debug_sessions``, ``reset_knobs`` and ``set_knobs`` from here; new code imports
``services.fakes.control``.
"""

from services.fakes.control import debug_sessions, http_request, reset_knobs, set_knobs

__all__ = ["debug_sessions", "http_request", "reset_knobs", "set_knobs"]
