"""Sans-I/O audio toolkit for the hot path: resampling, G.711, wire formats, base64, PCM mime types.

Everything here is synchronous and allocation-light. All PCM is **signed 16-bit little-endian mono**
(``pcm16``/``s16le``) unless a name says otherwise. Module state (lookup tables, format table) is built
once at import and is read-only afterwards; per-session state lives in :class:`StreamResampler` /
:class:`RateConverter` instances that the caller owns (one per session and direction).
"""

from __future__ import annotations

import binascii
import sys
from collections.abc import Callable, Mapping
from types import MappingProxyType
from typing import Literal, get_args

import msgspec
import numpy as np
import soxr

__all__ = [
    "ALAW_DECODE",
    "FORMATS",
    "RESAMPLER_QUALITY",
    "ULAW_DECODE",
    "AudioFormat",
    "Encoding",
    "RateConverter",
    "StreamResampler",
    "alaw_to_pcm16",
    "b64decode_any",
    "b64encode_std",
    "decode_to_pcm16",
    "dominant_hz",
    "duration_ms",
    "encode_from_pcm16",
    "openai_format",
    "parse_pcm_mime",
    "pcm16_to_alaw",
    "pcm16_to_ulaw",
    "tone",
    "ulaw_to_pcm16",
]

_LE_HOST = sys.byteorder == "little"
_S16LE = np.dtype("<i2")
_U16LE = np.dtype("<u2")

# --------------------------------------------------------------------------------------------------
# Streaming resampler

# soxr quality for every StreamResampler. soxr aligns its output (the filter's group delay is trimmed,
# so an impulse comes out where it went in); what a realtime caller pays is *buffering*: soxr holds
# input until it has a processing block, then emits in bursts. Measured with soxr 1.1, int16, fed 20 ms
# frames: steady-state lag of cumulative output behind cumulative input, mean / max, ms:
#
#                 QQ          LQ           MQ           HQ           VHQ
#   16k -> 24k   0.1/0.1    11.2/20.0   21.4/37.7    21.6/36.6    42.8/76.2
#   24k -> 16k   0.1/0.1    11.2/20.0   21.4/37.6    21.6/36.6    42.8/76.2
#   24k ->  8k   0.0/0.0    22.5/40.0   42.5/75.2    43.6/73.1    86.4/152.5
#    8k -> 24k   0.2/0.2    22.5/40.0   42.6/75.3    43.7/73.2    86.4/152.5
#
# HQ (20-bit precision) costs the same latency as MQ (16-bit) and half of VHQ (28-bit), at ~7-9 us
# per 20 ms frame, so HQ it is. QQ (cubic interpolation, no anti-alias filter) would be free of
# latency but aliases audibly on downsampling (24k -> 8k for telephony); LQ halves the lag with a
# wider transition band -- the knob to turn if latency ever matters more than fidelity.
RESAMPLER_QUALITY = "HQ"

_EMPTY_I16 = np.zeros(0, dtype=np.int16)
_EMPTY_I16.setflags(write=False)


def _check_rate(name: str, rate: int) -> int:
    if type(rate) is not int or rate <= 0:
        raise ValueError(f"{name} must be a positive int (Hz)")
    return rate


class StreamResampler:
    """Streaming PCM16 LE mono resampler for one session and one direction.

    ``process`` may return ``b""`` for a while (soxr emits in bursts, see :data:`RESAMPLER_QUALITY`);
    the audio is not lost, it comes out with later calls or :meth:`flush`. Input of any length is
    accepted: a trailing odd byte (half a sample) is kept and prefixed to the next call's input. When
    ``in_rate == out_rate`` the resampler is a passthrough: whole-sample input is returned as the very
    same object, without a copy.

    Not thread-safe (one owner, like the codec that holds it).
    """

    __slots__ = ("_carry", "_dirty", "_rs", "in_rate", "out_rate")

    def __init__(self, in_rate: int, out_rate: int) -> None:
        self.in_rate = _check_rate("in_rate", in_rate)
        self.out_rate = _check_rate("out_rate", out_rate)
        self._carry = b""  # b"" or one byte: the low half of a sample split across calls
        self._dirty = False  # soxr has been fed since the last flush/reset
        self._rs = (
            None
            if in_rate == out_rate
            else soxr.ResampleStream(in_rate, out_rate, 1, dtype="int16", quality=RESAMPLER_QUALITY)
        )

    @property
    def passthrough(self) -> bool:
        return self._rs is None

    def process(self, pcm: bytes) -> bytes:
        """Feed PCM16 LE at ``in_rate``; return whatever PCM16 LE at ``out_rate`` is ready."""
        if self._carry:
            pcm = self._carry + pcm
            self._carry = b""
        if len(pcm) & 1:
            self._carry = bytes(pcm[-1:])
            pcm = pcm[:-1]
        rs = self._rs
        if rs is None or not pcm:
            return pcm
        self._dirty = True
        if _LE_HOST:
            return rs.resample_chunk(np.frombuffer(pcm, dtype=np.int16)).tobytes()
        x = np.frombuffer(pcm, dtype=_S16LE).astype(np.int16)
        return rs.resample_chunk(x).astype(_S16LE).tobytes()

    def flush(self) -> bytes:
        """End of stream: return the remaining output and make the resampler ready for a new stream.

        A carried half-sample cannot be completed any more and is discarded.
        """
        self._carry = b""
        rs = self._rs
        if rs is None or not self._dirty:
            return b""
        self._dirty = False
        tail = rs.resample_chunk(_EMPTY_I16, last=True)
        rs.clear()
        return tail.tobytes() if _LE_HOST else tail.astype(_S16LE).tobytes()

    def reset(self) -> None:
        """Drop all pending audio without output (e.g. on barge-in or an input buffer clear)."""
        self._carry = b""
        if self._dirty and self._rs is not None:
            self._dirty = False
            self._rs.clear()

    def __repr__(self) -> str:
        return f"StreamResampler({self.in_rate} -> {self.out_rate})"


class RateConverter:
    """Converts chunks of any input rate to a fixed ``out_rate``; keep one per session and direction.

    The underlying :class:`StreamResampler` is created lazily on the first chunk and re-created when
    a chunk arrives with a different input rate. On such a change the previous stream is flushed and
    its tail (already at ``out_rate``) is prepended to the output, so no audio is lost; only a pending
    odd byte of the old stream is dropped.
    """

    __slots__ = ("_rs", "out_rate")

    def __init__(self, out_rate: int) -> None:
        self.out_rate = _check_rate("out_rate", out_rate)
        self._rs: StreamResampler | None = None

    @property
    def in_rate(self) -> int | None:
        """Input rate of the current stream, ``None`` before the first chunk."""
        return None if self._rs is None else self._rs.in_rate

    def convert(self, pcm: bytes, rate: int) -> bytes:
        rs = self._rs
        if rs is not None and rs.in_rate == rate:
            return rs.process(pcm)
        new = StreamResampler(rate, self.out_rate)  # first: a bad rate raises before anything is lost
        tail = rs.flush() if rs is not None else b""
        self._rs = new
        out = new.process(pcm)
        return tail + out if tail else out

    def flush(self) -> bytes:
        """End of stream (e.g. end of a response or of the user's turn): the tail, then ready again."""
        return b"" if self._rs is None else self._rs.flush()

    def reset(self) -> None:
        """Drop pending audio without output."""
        if self._rs is not None:
            self._rs.reset()

    def __repr__(self) -> str:
        return f"RateConverter({self.in_rate} -> {self.out_rate})"


# --------------------------------------------------------------------------------------------------
# G.711, bit-exact with the ITU-T reference implementation (G.191 Software Tools Library, g711.c:
# ulaw_compress/ulaw_expand, alaw_compress/alaw_expand), which takes the 14 (mu-law) or 13 (A-law)
# most significant bits of a 16-bit sample. Negative inputs use the one's complement magnitude
# (``~x``), so e.g. mu-law encodes -1..-4 as 0x7F ("negative zero") and A-law encodes -1..-16 as 0x55.
# (Sun's widely copied g711.c, and so CPython's audioop, negate instead for mu-law: its encoder differs
# from the reference on 508 negative inputs at decision boundaries, e.g. -31612. Its A-law encoder and
# both decoders are identical to the reference.)
#
# Round trips: A-law has 256 distinct levels, encode(decode(c)) == c for every code. mu-law has two
# codes for zero, 0xFF (+0) and 0x7F (-0); both decode to 0, which encodes to 0xFF, so 0x7F is the one
# code that does not survive a round trip (all other 255 do). decode(encode(x)) is the midpoint of x's
# quantisation interval, and encode(decode(encode(x))) == encode(x) for every 16-bit x.


def _bit_length(a: np.ndarray) -> np.ndarray:
    """Vectorised int.bit_length for non-negative ints (< 2**52): frexp gives a = m * 2**e, .5 <= m < 1."""
    return np.frexp(a.astype(np.float64))[1].astype(np.int32)


def _build_ulaw_decode() -> np.ndarray:
    code = np.arange(256, dtype=np.int32)
    mant = ~code
    exponent = (mant >> 4) & 0x7
    step = 4 << (exponent + 1)
    mag = (0x80 << exponent) + step * (mant & 0xF) + step // 2 - 4 * 33
    return np.where(code < 0x80, -mag, mag).astype(_S16LE)


def _build_alaw_decode() -> np.ndarray:
    code = np.arange(256, dtype=np.int32)
    ix = (code ^ 0x55) & 0x7F
    exponent = ix >> 4
    mant = (ix & 0xF) + np.where(exponent > 0, 16, 0)
    mant = ((mant << 4) + 8) << np.maximum(exponent - 1, 0)
    return np.where(code > 0x7F, mant, -mant).astype(_S16LE)


def _all_int16_by_u16() -> np.ndarray:
    """The signed value of every uint16 index 0..65535, as int32."""
    return np.arange(65536, dtype=np.uint16).view(np.int16).astype(np.int32)


def _build_ulaw_encode() -> np.ndarray:
    x = _all_int16_by_u16()
    absno = np.minimum(np.where(x < 0, ~x, x) >> 2, 0x1FFF - 33) + 33  # 14-bit magnitude + bias
    segno = 1 + _bit_length(absno >> 6)
    low = 0xF - ((absno >> segno) & 0xF)
    code = ((8 - segno) << 4) | low
    return np.where(x >= 0, code | 0x80, code).astype(np.uint8)


def _build_alaw_encode() -> np.ndarray:
    x = _all_int16_by_u16()
    ix = np.where(x < 0, ~x, x) >> 4  # 0..2047
    exponent = np.maximum(_bit_length(ix) - 4, 0)  # 0 for ix <= 31 (ix in 16..31 -> segment 1)
    seg = np.where(ix > 15, np.maximum(exponent, 1), 0)
    code = np.where(ix > 15, (seg << 4) + (ix >> np.maximum(seg - 1, 0)) - 16, ix)
    code = np.where(x >= 0, code | 0x80, code)
    return (code ^ 0x55).astype(np.uint8)


def _frozen(a: np.ndarray) -> np.ndarray:
    a.setflags(write=False)
    return a


ULAW_DECODE: np.ndarray = _frozen(_build_ulaw_decode())  # 256 x int16 (LE), index = mu-law byte
ALAW_DECODE: np.ndarray = _frozen(_build_alaw_decode())  # 256 x int16 (LE), index = A-law byte
_ULAW_ENCODE = _frozen(_build_ulaw_encode())  # 65536 x uint8, index = uint16 view of the sample
_ALAW_ENCODE = _frozen(_build_alaw_encode())


def ulaw_to_pcm16(b: bytes) -> bytes:
    """G.711 mu-law bytes -> PCM16 LE (two output bytes per input byte)."""
    return ULAW_DECODE.take(np.frombuffer(b, dtype=np.uint8)).tobytes()


def alaw_to_pcm16(b: bytes) -> bytes:
    """G.711 A-law bytes -> PCM16 LE."""
    return ALAW_DECODE.take(np.frombuffer(b, dtype=np.uint8)).tobytes()


def _encode(table: np.ndarray, pcm: bytes) -> bytes:
    if len(pcm) & 1:
        raise ValueError("PCM16 input has an odd number of bytes")
    return table.take(np.frombuffer(pcm, dtype=_U16LE)).tobytes()


def pcm16_to_ulaw(b: bytes) -> bytes:
    """PCM16 LE -> G.711 mu-law (one byte per sample). Raises ValueError on an odd byte count."""
    return _encode(_ULAW_ENCODE, b)


def pcm16_to_alaw(b: bytes) -> bytes:
    """PCM16 LE -> G.711 A-law. Raises ValueError on an odd byte count."""
    return _encode(_ALAW_ENCODE, b)


# --------------------------------------------------------------------------------------------------
# Wire formats

Encoding = Literal["pcm16", "pcmu", "pcma"]
_ENCODINGS: frozenset[str] = frozenset(get_args(Encoding))


class AudioFormat(msgspec.Struct, frozen=True):
    encoding: Encoding
    rate: int  # Hz

    @property
    def sample_bytes(self) -> int:
        return 2 if self.encoding == "pcm16" else 1

    @property
    def name(self) -> str:
        """Stable, dialect-free name, ``<encoding>/<rate>`` like an RTP rtpmap (``pcmu/8000``,
        ``pcm16/24000``): what canonical events carry; :meth:`from_name` gives the very same format back."""
        return f"{self.encoding}/{self.rate}"

    @classmethod
    def from_name(cls, name: str) -> AudioFormat:
        """The inverse of :attr:`name`. Strict (no spaces, case or leading zeros), so that
        ``from_name(n).name == n`` always holds; raises ValueError otherwise."""
        encoding, sep, rate = name.partition("/")
        if not sep or encoding not in _ENCODINGS or not (rate.isascii() and rate.isdecimal()) or rate[0] == "0":
            raise ValueError("not an audio format name")
        return cls(encoding, int(rate))  # type: ignore[arg-type]  # checked against Encoding above


PCM16_24K = AudioFormat("pcm16", 24000)
PCMU_8K = AudioFormat("pcmu", 8000)
PCMA_8K = AudioFormat("pcma", 8000)

# OpenAI Realtime wire names -> format. GA: ``{"type": "audio/pcm", "rate": 24000}`` (keyed by type;
# GA only allows 24 kHz for PCM, use :func:`openai_format` to honour a rate field), ``{"type":
# "audio/pcmu"}``, ``{"type": "audio/pcma"}``; beta: ``"pcm16"``, ``"g711_ulaw"``, ``"g711_alaw"``.
FORMATS: Mapping[str, AudioFormat] = MappingProxyType(
    {
        "audio/pcm": PCM16_24K,
        "audio/pcmu": PCMU_8K,
        "audio/pcma": PCMA_8K,
        "pcm16": PCM16_24K,
        "g711_ulaw": PCMU_8K,
        "g711_alaw": PCMA_8K,
    }
)


def openai_format(spec: str | Mapping[str, object]) -> AudioFormat:
    """An OpenAI format spec (beta string or GA ``{"type", "rate"}`` object) -> AudioFormat.

    Raises ValueError for an unknown type or a bad rate (G.711 is always 8 kHz).
    """
    if isinstance(spec, str):
        name, rate = spec, None
    else:
        name, rate = spec.get("type"), spec.get("rate")
    fmt = FORMATS.get(name) if isinstance(name, str) else None
    if fmt is None:
        raise ValueError("unsupported audio format type")
    if rate is None or rate == fmt.rate:
        return fmt
    if fmt.encoding != "pcm16" or type(rate) is not int or rate <= 0:
        raise ValueError("unsupported audio format rate")
    return AudioFormat(fmt.encoding, rate)


def _pcm16_identity(b: bytes) -> bytes:
    return b


_DECODERS: Mapping[str, Callable[[bytes], bytes]] = MappingProxyType(
    {"pcm16": _pcm16_identity, "pcmu": ulaw_to_pcm16, "pcma": alaw_to_pcm16}
)
_ENCODERS: Mapping[str, Callable[[bytes], bytes]] = MappingProxyType(
    {"pcm16": _pcm16_identity, "pcmu": pcm16_to_ulaw, "pcma": pcm16_to_alaw}
)


def decode_to_pcm16(data: bytes, fmt: AudioFormat) -> bytes:
    """Wire audio in ``fmt`` -> PCM16 LE at ``fmt.rate`` (pcm16 is returned as is, even if odd-length)."""
    return _DECODERS[fmt.encoding](data)


def encode_from_pcm16(pcm: bytes, fmt: AudioFormat) -> bytes:
    """PCM16 LE already at ``fmt.rate`` -> wire audio in ``fmt`` (resample first with a RateConverter)."""
    return _ENCODERS[fmt.encoding](pcm)


# --------------------------------------------------------------------------------------------------
# Base64

_URLSAFE_TO_STD = bytes.maketrans(b"-_", b"+/")
_PAD = (b"", None, b"==", b"=")  # by len % 4; 1 is never valid


def b64decode_any(s: str | bytes) -> bytes:
    """Decode base64 in the standard or URL-safe alphabet, padded or not.

    Strict otherwise: whitespace, other characters or misplaced padding raise ``ValueError`` (the
    message never contains the input).
    """
    try:
        if isinstance(s, str):
            if "-" in s or "_" in s:
                s = s.encode("ascii").translate(_URLSAFE_TO_STD)
        elif b"-" in s or b"_" in s:
            s = s.translate(_URLSAFE_TO_STD)
        pad = _PAD[len(s) & 3]
        if pad is None:
            raise ValueError
        if pad:
            s = s + (pad if isinstance(s, bytes) else pad.decode())
        return binascii.a2b_base64(s, strict_mode=True)
    except (ValueError, TypeError):  # binascii.Error, UnicodeError are ValueErrors
        raise ValueError("invalid base64") from None


def b64encode_std(b: bytes) -> str:
    """Standard-alphabet, padded base64 as str (what OpenAI Realtime expects)."""
    return binascii.b2a_base64(b, newline=False).decode("ascii")


# --------------------------------------------------------------------------------------------------
# PCM mime types (Gemini Live: ``audio/pcm;rate=16000`` in, ``audio/pcm;rate=24000`` out)

_PCM_MIME_TYPES = frozenset({"audio/pcm", "audio/l16"})
_MIME_FAST = MappingProxyType(
    {"audio/pcm;rate=16000": 16000, "audio/pcm;rate=24000": 24000, "audio/pcm;rate=8000": 8000}
)


def parse_pcm_mime(mime: str, default_rate: int = 16000) -> int:
    """Sample rate from a raw-PCM mime type; ``default_rate`` when it has no ``rate`` parameter.

    Accepts ``audio/pcm`` and ``audio/L16`` (Gemini labels its s16le output ``audio/L16;codec=pcm``;
    RFC 2586 L16 would be big-endian, this toolkit treats both as little-endian like Gemini does),
    case-insensitive, with optional spaces and quotes. Raises ValueError for any other type, a bad
    rate, or a channel count other than 1.
    """
    fast = _MIME_FAST.get(mime)
    if fast is not None:
        return fast
    base, *params = mime.split(";")
    if base.strip().lower() not in _PCM_MIME_TYPES:
        raise ValueError("not a PCM audio mime type")
    rate = default_rate
    for param in params:
        key, sep, value = param.partition("=")
        key, value = key.strip().lower(), value.strip().strip('"').strip()
        if not sep:
            continue
        if key == "rate":
            if not (value.isascii() and value.isdecimal()) or int(value) <= 0:
                raise ValueError("invalid rate in mime type")
            rate = int(value)
        elif key == "channels" and value != "1":
            raise ValueError("only mono PCM is supported")
    return rate


# --------------------------------------------------------------------------------------------------
# Helpers for tests, fakes and benchmarks


def tone(freq_hz: float, ms: float, rate: int, amplitude: int = 8000) -> bytes:
    """A sine of ``freq_hz`` lasting ``ms`` at ``rate``, as PCM16 LE (starts at phase 0)."""
    n = round(ms * rate / 1000)
    t = np.arange(n, dtype=np.float64) * (2 * np.pi * freq_hz / rate)
    return np.rint(amplitude * np.sin(t)).astype(_S16LE).tobytes()


def dominant_hz(pcm: bytes, rate: int) -> float:
    """Frequency of the strongest spectral peak of PCM16 LE, to a fraction of a bin.

    Hann window, FFT, then a parabola through the log magnitudes of the peak bin and its neighbours.
    """
    x = np.frombuffer(pcm, dtype=_S16LE, count=len(pcm) // 2).astype(np.float64)
    n = x.size
    if n < 4:
        raise ValueError("need at least 4 samples")
    x -= x.mean()
    mag = np.abs(np.fft.rfft(x * np.hanning(n)))
    k = int(np.argmax(mag[1:])) + 1
    if k >= mag.size - 1:
        return k * rate / n
    a, b, c = np.log(mag[k - 1 : k + 2] + 1e-12)
    denom = a - 2 * b + c
    p = 0.5 * (a - c) / denom if denom else 0.0
    return (k + p) * rate / n


def duration_ms(pcm_len_bytes: int, rate: int, sample_bytes: int = 2) -> float:
    """Playing time of ``pcm_len_bytes`` of audio (PCM16 by default; ``sample_bytes=1`` for G.711)."""
    return pcm_len_bytes * 1000 / (sample_bytes * rate)
