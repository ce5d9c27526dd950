"""InputClock: which up envelope carried a given millisecond of a provider connection's input audio."""

from __future__ import annotations

from services.provider_worker.worker import InputClock

FRAME_20MS_24K = 960  # bytes of PCM16 at 24 kHz


def test_the_envelope_holding_a_millisecond_is_found() -> None:
    clock = InputClock()
    for seq in range(1, 11):  # ten 20 ms frames: seq n holds (20(n-1), 20n] ms
        clock.add(seq, FRAME_20MS_24K, 24_000)
    assert clock.seq_at(1) == 1
    assert clock.seq_at(20) == 1
    assert clock.seq_at(21) == 2
    assert clock.seq_at(130) == 7
    assert clock.seq_at(200) == 10
    assert clock.seq_at(201) is None, "not sent on this connection"


def test_rates_are_honoured_and_one_envelope_with_several_chunks_is_one_mark() -> None:
    clock = InputClock()
    clock.add(5, 320, 8_000)  # 20 ms at 8 kHz
    clock.add(5, 320, 8_000)  # same envelope: 40 ms in all
    clock.add(6, 1_600, 16_000)  # 50 ms at 16 kHz
    assert clock.seq_at(40) == 5
    assert clock.seq_at(41) == 6
    assert clock.seq_at(90) == 6


def test_marks_before_a_found_point_are_dropped() -> None:
    clock = InputClock()
    for seq in range(1, 101):
        clock.add(seq, FRAME_20MS_24K, 24_000)
    assert clock.seq_at(1_000) == 50
    assert len(clock._marks) == 51  # bounded: what came before the newest commit is gone
    assert clock.seq_at(1_010) == 51
