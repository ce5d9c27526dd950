"""Audio helpers of the fakes: G.711 tables, tone synthesis, dominant-frequency estimate, stand-in transcript.

Pure functions over bytes (s16le mono unless said otherwise); no clock, no I/O.
"""

from __future__ import annotations

import functools

import numpy as np

# ---------------------------------------------------------------------------------------------------------------------
# Audio

PCM16 = "pcm16"  # s16le mono
PCMU = "pcmu"  # G.711 mu-law, 8 kHz
PCMA = "pcma"  # G.711 A-law, 8 kHz


def _ulaw_table() -> np.ndarray:
    """mu-law byte -> int16 (ITU-T G.711, the usual bias-0x84 expansion)."""
    u = ~np.arange(256, dtype=np.int32) & 0xFF
    exponent = (u >> 4) & 0x07
    magnitude = ((((u & 0x0F) << 3) + 0x84) << exponent) - 0x84
    return np.where(u & 0x80, -magnitude, magnitude).astype(np.int16)


def _alaw_table() -> np.ndarray:
    """A-law byte -> int16 (ITU-T G.711; even bits inverted with 0x55, sign bit set means positive)."""
    a = np.arange(256, dtype=np.int32) ^ 0x55
    exponent = (a >> 4) & 0x07
    mantissa = a & 0x0F
    magnitude = np.where(exponent == 0, (mantissa << 4) + 8, ((mantissa << 4) + 0x108) << np.maximum(exponent - 1, 0))
    return np.where(a & 0x80, magnitude, -magnitude).astype(np.int16)


def _nearest_code_table(decode: np.ndarray) -> np.ndarray:
    """int16 (offset by 32768) -> the code whose decoded value is nearest: an encoder that round-trips the table."""
    # Sort by value, ties by descending code: mu-law's two zeros then encode as 0xFF, the usual "+0".
    order = np.lexsort((-np.arange(decode.size), decode))
    values = decode[order].astype(np.int32)
    x = np.arange(-32768, 32768, dtype=np.int32)
    right = np.clip(np.searchsorted(values, x), 1, len(values) - 1)
    left = right - 1
    below, above = x - values[left], values[right] - x
    pick = np.where((below < above) | ((below == above) & (x < 0)), left, right)  # ties round away from zero
    return order[pick].astype(np.uint8)


_DECODE_TABLES: dict[str, np.ndarray] = {PCMU: _ulaw_table(), PCMA: _alaw_table()}
_ENCODE_TABLES: dict[str, np.ndarray] = {k: _nearest_code_table(v) for k, v in _DECODE_TABLES.items()}


def decode_to_pcm16(raw: bytes, encoding: str) -> bytes:
    """Audio in a wire encoding -> s16le. PCM16 passes through (a trailing odd byte is the caller's business)."""
    table = _DECODE_TABLES.get(encoding)
    if table is None:
        return raw
    return table[np.frombuffer(raw, dtype=np.uint8)].astype("<i2").tobytes()


def encode_from_pcm16(pcm: bytes, encoding: str) -> bytes:
    """s16le -> a wire encoding (lookup table, no per-sample Python)."""
    table = _ENCODE_TABLES.get(encoding)
    if table is None:
        return pcm
    samples = np.frombuffer(pcm[: len(pcm) // 2 * 2], dtype="<i2").astype(np.int32)
    return table[samples + 32768].tobytes()


@functools.lru_cache(maxsize=64)
def tone(hz: float, ms: int, rate: int, amplitude: int = 8000) -> bytes:
    """A sine tone as s16le mono. Cached: every response of a run usually has the same shape."""
    n = round(rate * ms / 1000)
    t = np.arange(n, dtype=np.float64) / rate
    return (amplitude * np.sin(2 * np.pi * hz * t)).astype("<i2").tobytes()


def dominant_hz(pcm: bytes, rate: int) -> int | None:
    """Strongest frequency of s16le audio, rounded to an int; None for silence or < 20 ms.

    Hann window + zero-padded FFT + parabolic interpolation of the peak: accurate to well under 1 Hz for a
    tone, which is what lets a test tell 440 Hz from 660 Hz (16 kHz audio declared as 24 kHz).
    """
    x = np.frombuffer(pcm[: len(pcm) // 2 * 2], dtype="<i2").astype(np.float64)
    if x.size < rate // 50:
        return None
    if x.size > 2 * rate:  # two seconds are plenty; keeps the FFT small for long items
        start = (x.size - 2 * rate) // 2
        x = x[start : start + 2 * rate]
    x = x - x.mean()
    if float(np.sqrt(np.mean(x * x))) < 1.0:
        return None
    nfft = 1 << max(16, (x.size * 4 - 1).bit_length())
    mag = np.abs(np.fft.rfft(x * np.hanning(x.size), nfft))
    mag[0] = 0.0
    k = int(np.argmax(mag))
    offset = 0.0
    if 0 < k < mag.size - 1:
        a, b, c = np.log(mag[k - 1 : k + 2] + 1e-12)
        denom = a - 2 * b + c
        offset = 0.5 * (a - c) / denom if denom else 0.0
    return round((k + offset) * rate / nfft)


def stand_in_transcript(samples: int, rate: int) -> str:
    """What the fakes "hear" in user audio: its duration, e.g. ``audio 1.2s``."""
    return f"audio {samples / rate:.1f}s"
