"""A small energy-based turn detector shared by both fakes.

Pure: bytes in, events out, no clock (time is counted in samples), so it is unit-tested with literal audio.
"""

from __future__ import annotations

import dataclasses
from collections import deque
from dataclasses import dataclass

import numpy as np

# ---------------------------------------------------------------------------------------------------------------------
# Energy VAD


@dataclass(frozen=True, slots=True)
class SpeechStarted:
    """Speech began. ``start_ms`` is on the VAD's clock and includes the prefix padding (as OpenAI reports it)."""

    start_ms: int


@dataclass(frozen=True, slots=True)
class SpeechStopped:
    """Speech ended after enough silence. ``pcm`` is the segment: prefix padding + speech + trailing silence."""

    end_ms: int
    pcm: bytes = dataclasses.field(repr=False)


VadEvent = SpeechStarted | SpeechStopped


class EnergyVad:
    """Turn detection by signal energy over s16le mono audio.

    A window (10 ms by default) is *loud* when its RMS exceeds ``threshold_rms``. The first loud window starts
    speech; ``silence_ms`` of consecutive quiet windows stop it. Owns only its buffers: no I/O, no clock (time
    is the number of samples fed, offset by ``start_ms``), so it is unit-tested with plain byte strings.
    """

    def __init__(
        self,
        rate: int,
        *,
        threshold_rms: float = 500.0,
        silence_ms: int = 500,
        prefix_padding_ms: int = 300,
        window_ms: int = 10,
        start_ms: int = 0,
    ) -> None:
        if rate <= 0 or window_ms <= 0:
            raise ValueError("rate and window_ms must be positive")
        self.rate = rate
        self.threshold_rms = float(threshold_rms)
        self.window_ms = window_ms
        self._win_bytes = max(1, rate * window_ms // 1000) * 2
        self._silence_windows = max(1, -(-int(silence_ms) // window_ms))
        self._prefix: deque[bytes] = deque(maxlen=max(0, int(prefix_padding_ms) // window_ms))
        self._pending = bytearray()
        self._segment: list[bytes] = []
        self._quiet_run = 0
        self._samples = round(start_ms * rate / 1000)  # samples consumed by whole windows
        self.in_speech = False

    @property
    def elapsed_ms(self) -> int:
        """Position of the VAD clock (everything fed, including a partial window)."""
        return round((self._samples + len(self._pending) // 2) * 1000 / self.rate)

    def _ms(self, samples: int) -> int:
        return round(samples * 1000 / self.rate)

    def feed(self, pcm: bytes) -> list[VadEvent]:
        """Feed audio; returns the speech events it completes (possibly several for a long chunk)."""
        self._pending += pcm
        whole = len(self._pending) // self._win_bytes * self._win_bytes
        if not whole:
            return []
        block = bytes(self._pending[:whole])
        del self._pending[:whole]
        frames = np.frombuffer(block, dtype="<i2").astype(np.float64).reshape(-1, self._win_bytes // 2)
        loud_flags = np.sqrt(np.mean(frames * frames, axis=1)) > self.threshold_rms
        win_samples = self._win_bytes // 2
        events: list[VadEvent] = []
        for i, loud in enumerate(loud_flags):
            window = block[i * self._win_bytes : (i + 1) * self._win_bytes]
            if not self.in_speech:
                if loud:
                    prefix = list(self._prefix)
                    start = self._samples - len(prefix) * win_samples
                    self._segment = [*prefix, window]
                    self._prefix.clear()
                    self.in_speech = True
                    self._quiet_run = 0
                    events.append(SpeechStarted(self._ms(start)))
                else:
                    self._prefix.append(window)  # maxlen keeps only the padding
            else:
                self._segment.append(window)
                self._quiet_run = 0 if loud else self._quiet_run + 1
                if self._quiet_run >= self._silence_windows:
                    events.append(SpeechStopped(self._ms(self._samples + win_samples), b"".join(self._segment)))
                    self._end_segment()
            self._samples += win_samples
        return events

    def flush(self) -> SpeechStopped | None:
        """End of stream (Gemini ``audioStreamEnd``): close an open segment now, partial window included."""
        if not self.in_speech:
            return None
        tail = bytes(self._pending[: len(self._pending) // 2 * 2])
        self._samples += len(tail) // 2
        self._pending.clear()
        event = SpeechStopped(self._ms(self._samples), b"".join(self._segment) + tail)
        self._end_segment()
        return event

    def reset(self) -> None:
        """Drop buffered audio and any open segment; the clock keeps running (OpenAI ``clear``/``commit``)."""
        self._samples += len(self._pending) // 2
        self._pending.clear()
        self._prefix.clear()
        self._end_segment()

    def _end_segment(self) -> None:
        self._segment = []
        self._quiet_run = 0
        self.in_speech = False
