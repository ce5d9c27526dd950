"""shared.audio: resampling, G.711, formats, base64, mime types. Pure functions: no network, no loop.

Micro-benchmark (``python -m tests.test_audio``; CPython 3.11, numpy 2.4, soxr 1.1, shared 2-vCPU x86-64
VM, best of 5, per call; run-to-run noise is about +-30 %):

    StreamResampler 16k->24k, 20 ms frame (640 B)    ~8.5 us
    StreamResampler 24k->16k, 20 ms frame (960 B)    ~8.5 us
    StreamResampler 24k->8k,  20 ms frame (960 B)    ~6.5 us
    StreamResampler passthrough, 20 ms frame         ~0.12 us
    pcm16_to_ulaw / ulaw_to_pcm16, 20 ms @ 8k        ~1.8 us each
    b64decode_any, 20 ms @ 24k, std / url-safe       ~3.1 us / ~4.1 us
    b64encode_std, 20 ms @ 24k                       ~3.0 us
    parse_pcm_mime, common / other spelling          ~0.2 us / ~2.6 us

Timing is informational only and never asserted.
"""

from __future__ import annotations

import base64
import os
import warnings

import numpy as np
import pytest

from shared import audio as A

RATE_PAIRS = [(16000, 24000), (24000, 16000), (24000, 8000)]


def _samples(pcm: bytes) -> np.ndarray:
    return np.frombuffer(pcm, dtype="<i2").astype(np.int64)


def _stream(pcm: bytes, rs: A.StreamResampler, chunk_bytes: int) -> bytes:
    out = bytearray()
    for i in range(0, len(pcm), chunk_bytes):
        out += rs.process(pcm[i : i + chunk_bytes])
    out += rs.flush()
    return bytes(out)


def _frame_bytes(rate: int) -> int:
    return rate // 50 * 2  # 20 ms of PCM16


# --------------------------------------------------------------------------------------------------
# StreamResampler


@pytest.mark.parametrize("chunking", ["20ms", "317B"])
@pytest.mark.parametrize("freq", [440.0, 1000.0])
@pytest.mark.parametrize(("in_rate", "out_rate"), RATE_PAIRS)
def test_resampled_tone_keeps_frequency_length_and_has_no_clicks(in_rate, out_rate, freq, chunking):
    ms = 1000
    pcm = A.tone(freq, ms, in_rate)
    chunk = _frame_bytes(in_rate) if chunking == "20ms" else 317
    out = _stream(pcm, A.StreamResampler(in_rate, out_rate), chunk)

    # frequency within 1 %
    assert abs(A.dominant_hz(out, out_rate) - freq) / freq < 0.01

    # length: in_len * out / in, within a few samples
    n_in, n_out = len(pcm) // 2, len(out) // 2
    assert len(out) % 2 == 0
    assert abs(n_out - n_in * out_rate / in_rate) <= 3

    # no clicks: steady-state sample-to-sample steps no larger than the tone's own at out_rate (+10 %)
    trim = out_rate * 10 // 1000  # 10 ms each side: onset/offset transients of a hard-started sine
    y = _samples(out)[trim:-trim]
    ref = _samples(A.tone(freq, ms, out_rate))
    assert np.abs(np.diff(y)).max() <= 1.1 * np.abs(np.diff(ref)).max()
    # and the level is kept (passband), so the bound above is not met by a quiet output
    assert abs(np.abs(y).max() - 8000) < 8000 * 0.02


@pytest.mark.parametrize(("in_rate", "out_rate"), [*RATE_PAIRS, (8000, 24000), (48000, 24000)])
def test_output_does_not_depend_on_chunking(in_rate, out_rate):
    pcm = A.tone(440.0, 500, in_rate)
    whole = _samples(_stream(pcm, A.StreamResampler(in_rate, out_rate), len(pcm)))
    for chunk in (_frame_bytes(in_rate), 317, 1, 4097):
        got = _samples(_stream(pcm, A.StreamResampler(in_rate, out_rate), chunk))
        assert got.shape == whole.shape
        assert np.abs(got - whole).max() <= 3  # float rounding inside soxr only


def test_odd_byte_is_carried_not_dropped():
    rs = A.StreamResampler(16000, 24000)
    pcm = A.tone(1000.0, 100, 16000)
    a, b = pcm[:101], pcm[101:]
    out = rs.process(a) + rs.process(b) + rs.flush()
    assert len(out) == len(_stream(pcm, A.StreamResampler(16000, 24000), len(pcm)))


def test_flush_makes_resampler_reusable():
    rs = A.StreamResampler(24000, 16000)
    pcm = A.tone(440.0, 300, 24000)
    first = _samples(_stream(pcm, rs, 960))
    second = _samples(_stream(pcm, rs, 960))
    # same stream again (soxr's clear() is not bit-exact with a fresh instance: float rounding, <= 2 LSB)
    assert first.shape == second.shape and np.abs(first - second).max() <= 3
    assert rs.flush() == b""  # nothing pending: no-op


def test_reset_drops_pending_audio():
    rs = A.StreamResampler(24000, 16000)
    rs.process(A.tone(440.0, 100, 24000) + b"\x01")
    rs.reset()
    assert rs.flush() == b""
    pcm = A.tone(440.0, 300, 24000)
    got, fresh = _samples(_stream(pcm, rs, 960)), _samples(_stream(pcm, A.StreamResampler(24000, 16000), 960))
    assert got.shape == fresh.shape and np.abs(got - fresh).max() <= 3


def test_downsampling_rejects_aliases():
    # 6 kHz is above the 4 kHz Nyquist of 8 kHz output: it must be filtered, not folded to 2 kHz
    out = _stream(A.tone(6000.0, 500, 24000), A.StreamResampler(24000, 8000), 960)
    y = _samples(out)[80:-80]
    assert np.sqrt(np.mean(y.astype(np.float64) ** 2)) < 8000 / np.sqrt(2) * 1e-3  # > 60 dB down


def test_passthrough_is_zero_copy():
    rs = A.StreamResampler(24000, 24000)
    assert rs.passthrough
    pcm = A.tone(440.0, 20, 24000)
    assert rs.process(pcm) is pcm
    assert rs.flush() == b""


def test_passthrough_carries_odd_byte():
    rs = A.StreamResampler(16000, 16000)
    assert rs.process(b"\x01\x02\x03") == b"\x01\x02"
    assert rs.process(b"\x04\x05") == b"\x03\x04"
    assert rs.process(b"\x06") == b"\x05\x06"
    assert rs.process(b"\x07") == b""
    assert rs.flush() == b""  # a lone half-sample at end of stream is discarded
    assert rs.process(b"\x08\x09") == b"\x08\x09"


def test_empty_input_and_attributes():
    rs = A.StreamResampler(16000, 24000)
    assert (rs.in_rate, rs.out_rate, rs.passthrough) == (16000, 24000, False)
    assert rs.process(b"") == b""
    assert rs.flush() == b""


@pytest.mark.parametrize(("in_rate", "out_rate"), [(0, 16000), (16000, -1), (16000.0, 24000)])
def test_invalid_rates(in_rate, out_rate):
    with pytest.raises(ValueError):
        A.StreamResampler(in_rate, out_rate)


# --------------------------------------------------------------------------------------------------
# RateConverter


def test_rate_converter_lazy_passthrough_and_rate_change():
    rc = A.RateConverter(24000)
    assert rc.in_rate is None
    assert rc.flush() == b""

    same = A.tone(440.0, 20, 24000)
    assert rc.convert(same, 24000) is same
    assert rc.in_rate == 24000

    # switch to 16 kHz input, then to 8 kHz: every old stream's tail is emitted on the change
    a = A.tone(440.0, 400, 16000)
    b = A.tone(1000.0, 400, 8000)
    out_a = bytearray()
    for i in range(0, len(a), 640):
        out_a += rc.convert(a[i : i + 640], 16000)
    assert rc.in_rate == 16000
    out_b = bytearray(rc.convert(b[:320], 8000))  # starts with the flushed 16 kHz tail
    assert rc.in_rate == 8000
    for i in range(320, len(b), 320):
        out_b += rc.convert(b[i : i + 320], 8000)
    out_b += rc.flush()
    total = len(same) + len(out_a) + len(out_b)
    assert abs(total // 2 - (480 + 9600 + 9600)) <= 6
    # the 16 kHz part came out complete: the first 400 ms after the passthrough part is the 440 Hz tone
    a_out = bytes(out_a + out_b)[: 9600 * 2]
    assert abs(A.dominant_hz(a_out, 24000) - 440.0) < 4.4
    assert abs(A.dominant_hz(bytes(out_b)[-9000 * 2 :], 24000) - 1000.0) < 10


def test_rate_converter_bad_rate_loses_nothing():
    rc = A.RateConverter(24000)
    rc.convert(A.tone(440.0, 100, 16000), 16000)
    with pytest.raises(ValueError):
        rc.convert(b"\x00\x00", 0)
    assert rc.in_rate == 16000
    assert rc.flush() != b""  # the pending 16 kHz tail is still there


def test_rate_converter_reset():
    rc = A.RateConverter(16000)
    rc.convert(A.tone(440.0, 100, 24000), 24000)
    rc.reset()
    assert rc.flush() == b""


# --------------------------------------------------------------------------------------------------
# G.711: compared with a scalar transcription of the ITU-T G.191 STL reference (g711.c)


def _ref_ulaw_compress(x: int) -> int:
    absno = (((~x) >> 2) if x < 0 else (x >> 2)) + 33
    absno = min(absno, 0x1FFF)
    i, segno = absno >> 6, 1
    while i:
        segno += 1
        i >>= 1
    code = ((8 - segno) << 4) | (0xF - ((absno >> segno) & 0xF))
    return code | 0x80 if x >= 0 else code


def _ref_ulaw_expand(c: int) -> int:
    sign = -1 if c < 0x80 else 1
    mant = ~c
    exponent = (mant >> 4) & 0x7
    step = 4 << (exponent + 1)
    return sign * ((0x80 << exponent) + step * (mant & 0xF) + step // 2 - 4 * 33)


def _ref_alaw_compress(x: int) -> int:
    ix = ((~x) >> 4) if x < 0 else (x >> 4)
    if ix > 15:
        iexp = 1
        while ix > 16 + 15:
            ix >>= 1
            iexp += 1
        ix = ix - 16 + (iexp << 4)
    if x >= 0:
        ix |= 0x80
    return ix ^ 0x55


def _ref_alaw_expand(c: int) -> int:
    ix = (c ^ 0x55) & 0x7F
    iexp, mant = ix >> 4, ix & 0xF
    if iexp > 0:
        mant += 16
    mant = (mant << 4) + 8
    if iexp > 1:
        mant <<= iexp - 1
    return mant if c > 127 else -mant


ALL_CODES = bytes(range(256))
ALL_PCM = np.arange(-32768, 32768, dtype="<i2").tobytes()


def test_g711_known_values():
    assert _samples(A.ulaw_to_pcm16(b"\xff\x00\x7f\x80")).tolist() == [0, -32124, 0, 32124]
    assert _samples(A.alaw_to_pcm16(b"\xd5\x55\xaa\x2a")).tolist() == [8, -8, 32256, -32256]
    pcm = np.array([0, -1, 32767, -32768], dtype="<i2").tobytes()
    assert A.pcm16_to_ulaw(pcm) == b"\xff\x7f\x80\x00"
    assert A.pcm16_to_alaw(pcm) == b"\xd5\x55\xaa\x2a"
    assert A.ULAW_DECODE.shape == A.ALAW_DECODE.shape == (256,)
    assert A.ULAW_DECODE.dtype.itemsize == 2 and A.ULAW_DECODE.dtype.kind == "i"
    assert not A.ULAW_DECODE.flags.writeable


def test_g711_decode_matches_reference():
    assert _samples(A.ulaw_to_pcm16(ALL_CODES)).tolist() == [_ref_ulaw_expand(c) for c in range(256)]
    assert _samples(A.alaw_to_pcm16(ALL_CODES)).tolist() == [_ref_alaw_expand(c) for c in range(256)]


def test_g711_encode_matches_reference_for_every_sample():
    xs = range(-32768, 32768)
    assert A.pcm16_to_ulaw(ALL_PCM) == bytes(_ref_ulaw_compress(x) for x in xs)
    assert A.pcm16_to_alaw(ALL_PCM) == bytes(_ref_alaw_compress(x) for x in xs)


def test_g711_decoders_match_audioop():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        audioop = pytest.importorskip("audioop")  # removed in 3.13
    assert A.ulaw_to_pcm16(ALL_CODES) == audioop.ulaw2lin(ALL_CODES, 2)
    assert A.alaw_to_pcm16(ALL_CODES) == audioop.alaw2lin(ALL_CODES, 2)
    assert A.pcm16_to_alaw(ALL_PCM) == audioop.lin2alaw(ALL_PCM, 2)  # same as G.191 for A-law


def test_g711_round_trips():
    # A-law: all 256 codes. mu-law: 0x7F (-0) decodes to 0 like 0xFF (+0), and 0 encodes to 0xFF.
    assert A.pcm16_to_alaw(A.alaw_to_pcm16(ALL_CODES)) == ALL_CODES
    back = A.pcm16_to_ulaw(A.ulaw_to_pcm16(ALL_CODES))
    assert [c for c in range(256) if back[c] != c] == [0x7F]
    assert back[0x7F] == 0xFF
    # quantising twice changes nothing (up to mu-law's -0 becoming +0)
    codes = A.pcm16_to_alaw(ALL_PCM)
    assert A.pcm16_to_alaw(A.alaw_to_pcm16(codes)) == codes
    codes = A.pcm16_to_ulaw(ALL_PCM)
    assert A.pcm16_to_ulaw(A.ulaw_to_pcm16(codes)) == codes.replace(b"\x7f", b"\xff")
    assert codes.count(b"\x7f") == 4  # -1..-4


def test_g711_encode_rejects_odd_length():
    with pytest.raises(ValueError):
        A.pcm16_to_ulaw(b"\x00\x00\x00")
    with pytest.raises(ValueError):
        A.pcm16_to_alaw(b"\x00")
    assert A.pcm16_to_ulaw(b"") == b"" and A.ulaw_to_pcm16(b"") == b""


# --------------------------------------------------------------------------------------------------
# Formats


def test_format_table():
    assert A.FORMATS["audio/pcm"] == A.AudioFormat("pcm16", 24000)
    assert A.FORMATS["pcm16"] == A.AudioFormat("pcm16", 24000)
    assert A.FORMATS["audio/pcmu"] == A.FORMATS["g711_ulaw"] == A.AudioFormat("pcmu", 8000)
    assert A.FORMATS["audio/pcma"] == A.FORMATS["g711_alaw"] == A.AudioFormat("pcma", 8000)
    with pytest.raises(TypeError):
        A.FORMATS["x"] = A.AudioFormat("pcm16", 8000)  # type: ignore[index]
    with pytest.raises(AttributeError):
        A.FORMATS["pcm16"].rate = 16000  # type: ignore[misc]
    assert hash(A.FORMATS["pcm16"]) == hash(A.AudioFormat("pcm16", 24000))
    assert (A.FORMATS["pcm16"].sample_bytes, A.FORMATS["g711_alaw"].sample_bytes) == (2, 1)


def test_openai_format():
    assert A.openai_format({"type": "audio/pcm", "rate": 24000}) is A.FORMATS["audio/pcm"]
    assert A.openai_format({"type": "audio/pcm", "rate": 16000}) == A.AudioFormat("pcm16", 16000)
    assert A.openai_format({"type": "audio/pcmu"}) == A.AudioFormat("pcmu", 8000)
    assert A.openai_format("g711_alaw") == A.AudioFormat("pcma", 8000)
    for bad in (
        "opus",
        {"type": "audio/opus"},
        {},
        {"type": "audio/pcmu", "rate": 16000},
        {"type": "audio/pcm", "rate": "24000"},
        {"type": "audio/pcm", "rate": 0},
    ):
        with pytest.raises(ValueError):
            A.openai_format(bad)


def test_format_names_round_trip_exactly():
    # The names travel in SessionConfig (transformer failover): every format must come back as itself.
    for fmt in (*A.FORMATS.values(), A.AudioFormat("pcm16", 16000), A.AudioFormat("pcm16", 44100)):
        assert A.AudioFormat.from_name(fmt.name) == fmt
    assert (A.FORMATS["g711_ulaw"].name, A.FORMATS["audio/pcma"].name) == ("pcmu/8000", "pcma/8000")
    assert A.FORMATS["pcm16"].name == "pcm16/24000"
    for bad in ("", "pcmu", "pcmu/", "/8000", "opus/48000", "PCMU/8000", "pcmu/08000", "pcmu/0", "pcmu/-8",
                "pcmu/8000 ", "pcmu/8e3", "pcmu/\u0668000", "g711_ulaw"):
        with pytest.raises(ValueError):
            A.AudioFormat.from_name(bad)


def test_decode_encode_dispatch():
    pcm = A.tone(440.0, 20, 8000)
    assert A.decode_to_pcm16(pcm, A.FORMATS["pcm16"]) is pcm
    assert A.encode_from_pcm16(pcm, A.FORMATS["audio/pcm"]) is pcm
    u = A.encode_from_pcm16(pcm, A.FORMATS["g711_ulaw"])
    a = A.encode_from_pcm16(pcm, A.FORMATS["audio/pcma"])
    assert (u, a) == (A.pcm16_to_ulaw(pcm), A.pcm16_to_alaw(pcm))
    assert len(u) == len(a) == len(pcm) // 2
    assert A.decode_to_pcm16(u, A.FORMATS["audio/pcmu"]) == A.ulaw_to_pcm16(u)
    assert A.decode_to_pcm16(a, A.FORMATS["g711_alaw"]) == A.alaw_to_pcm16(a)
    # G.711 keeps a tone recognisable (sanity of the whole path)
    assert abs(A.dominant_hz(A.decode_to_pcm16(u, A.FORMATS["g711_ulaw"]), 8000) - 440.0) < 4.4


# --------------------------------------------------------------------------------------------------
# Base64


def _variants(data: bytes) -> list[bytes]:
    std, url = base64.b64encode(data), base64.urlsafe_b64encode(data)
    return [std, url, std.rstrip(b"="), url.rstrip(b"=")]


def test_b64decode_any_accepts_all_alphabets_and_padding():
    for n in range(0, 40):
        data = os.urandom(n) if n % 3 else bytes(range(250, 250 - n, -1))  # some with +/ / -_ for sure
        for enc in _variants(data):
            assert A.b64decode_any(enc) == data
            assert A.b64decode_any(enc.decode()) == data
    # both alphabets really exercised
    data = b"\xfb\xff\xbf" * 3
    assert b"+" in base64.b64encode(data) or b"/" in base64.b64encode(data)
    assert A.b64decode_any(base64.urlsafe_b64encode(data).decode()) == data
    assert A.b64decode_any(base64.b64encode(data).decode()) == data


@pytest.mark.parametrize(
    "bad",
    ["A", "AAAAA", "not base64!", "QUJD\n", "QU JD", "QQ==QQ==", "QQ===", "=QUJD", "QUJDé", b"\x00AA", 12],
)
def test_b64decode_any_rejects_garbage_without_echoing_it(bad):
    with pytest.raises(ValueError) as e:
        A.b64decode_any(bad)
    assert str(e.value) == "invalid base64"


def test_b64encode_std():
    for n in range(0, 20):
        data = os.urandom(n)
        s = A.b64encode_std(data)
        assert isinstance(s, str) and s == base64.b64encode(data).decode()
    assert A.b64encode_std(b"\xfb\xff") == "+/8="


# --------------------------------------------------------------------------------------------------
# Mime types


@pytest.mark.parametrize(
    ("mime", "rate"),
    [
        ("audio/pcm;rate=24000", 24000),
        ("audio/pcm;rate=16000", 16000),
        ("audio/pcm; rate=44100", 44100),
        ("audio/pcm ; rate = 22050 ", 22050),
        ('audio/pcm;rate="48000"', 48000),
        ("Audio/PCM;Rate=24000", 24000),
        ("audio/L16;codec=pcm;rate=16000", 16000),
        ("audio/l16;rate=24000;channels=1", 24000),
        ("audio/pcm", 16000),
        ("audio/pcm;", 16000),
        ("audio/pcm;codec=pcm", 16000),
    ],
)
def test_parse_pcm_mime(mime, rate):
    assert A.parse_pcm_mime(mime) == rate


def test_parse_pcm_mime_default_and_errors():
    assert A.parse_pcm_mime("audio/pcm", default_rate=24000) == 24000
    bad_mimes = ("audio/wav", "audio/ogg;codecs=opus", "audio/mpeg", "text/plain", "", "audio/pcm;rate=")
    bad_mimes += (
        "audio/pcm;rate=abc",
        "audio/pcm;rate=0",
        "audio/pcm;rate=-1",
        "audio/L16;rate=8000;channels=2",
        "audio/pcm;rate=\u00b2",
        "audio/pcm;rate=1.5e4",
    )
    for bad in bad_mimes:
        with pytest.raises(ValueError):
            A.parse_pcm_mime(bad)


# --------------------------------------------------------------------------------------------------
# Helpers


def test_tone_dominant_hz_duration():
    pcm = A.tone(440.0, 20, 24000)
    assert len(pcm) == 960 and abs(A.duration_ms(len(pcm), 24000) - 20.0) < 1e-9
    assert A.duration_ms(160, 8000, sample_bytes=1) == 20.0
    assert np.abs(_samples(pcm)).max() <= 8000
    # sub-bin accuracy: 1 s at 16 kHz -> 1 Hz bins
    for f in (440.0, 1000.0, 1234.5, 3000.3):
        assert abs(A.dominant_hz(A.tone(f, 1000, 16000), 16000) - f) < 0.1
    with pytest.raises(ValueError):
        A.dominant_hz(b"\x00\x00", 16000)


# --------------------------------------------------------------------------------------------------
# Micro-benchmark (not a test): python -m tests.test_audio


def _bench() -> None:  # pragma: no cover
    import timeit

    def us(fn, n=20000):
        return min(timeit.repeat(fn, number=n, repeat=5)) / n * 1e6

    for i, o in [*RATE_PAIRS, (24000, 24000)]:
        rs, pcm = A.StreamResampler(i, o), A.tone(440.0, 20, i)
        print(f"StreamResampler {i}->{o} 20 ms: {us(lambda rs=rs, pcm=pcm: rs.process(pcm)):.2f} us")
    pcm8, pcm24 = A.tone(440.0, 20, 8000), A.tone(440.0, 20, 24000)
    u = A.pcm16_to_ulaw(pcm8)
    std, url = base64.b64encode(pcm24).decode(), base64.urlsafe_b64encode(pcm24).decode()
    print(f"pcm16_to_ulaw 20 ms @8k: {us(lambda: A.pcm16_to_ulaw(pcm8)):.2f} us")
    print(f"ulaw_to_pcm16 20 ms @8k: {us(lambda: A.ulaw_to_pcm16(u)):.2f} us")
    print(f"b64decode_any std 20 ms @24k: {us(lambda: A.b64decode_any(std)):.2f} us")
    print(f"b64decode_any url 20 ms @24k: {us(lambda: A.b64decode_any(url)):.2f} us")
    print(f"b64encode_std 20 ms @24k: {us(lambda: A.b64encode_std(pcm24)):.2f} us")
    print(f"parse_pcm_mime fast: {us(lambda: A.parse_pcm_mime('audio/pcm;rate=24000')):.3f} us")
    print(f"parse_pcm_mime slow: {us(lambda: A.parse_pcm_mime('audio/L16;codec=pcm;rate=24000')):.3f} us")


if __name__ == "__main__":  # pragma: no cover
    _bench()
