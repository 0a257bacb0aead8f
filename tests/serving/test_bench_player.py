"""The serving benchmark's player model: underruns as a listener hears them.

``bench/serving_concurrency.py`` decides the serving goal ("0 underruns"), so its
measure is pinned here with frame arrival times given by hand: no server, no clock.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

_BENCH = Path(__file__).resolve().parents[2] / "bench" / "serving_concurrency.py"


@pytest.fixture(scope="module")
def player_cls():
    spec = importlib.util.spec_from_file_location("serving_concurrency_bench", _BENCH)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up there
    try:
        spec.loader.exec_module(module)
        yield module.Player
    finally:
        sys.modules.pop(spec.name, None)


def feed(player, frames):
    for at, duration in frames:
        player.frame(at, duration)
    return player


def test_on_time_frames_are_no_underrun(player_cls):
    # 80 ms frames, each arriving 10 ms before the audio in hand runs out.
    frames = [(0.0, 0.08)] + [(0.08 * k - 0.01, 0.08) for k in range(1, 20)]
    player = feed(player_cls(0.0), frames)
    assert (player.underruns, player.dry_s, player.late_frames) == (0, 0.0, 0)
    assert player.ends == pytest.approx(20 * 0.08)


def test_one_stall_is_one_underrun_and_shifts_playback(player_cls):
    # 240 ms in hand at t=0; the next burst arrives at 0.54 s: dry for 0.30 s once.
    frames = [(0.0, 0.24), (0.54, 0.08), (0.55, 0.08), (0.56, 0.08), (0.57, 0.08)]
    player = feed(player_cls(0.0), frames)
    assert player.underruns == 1
    assert player.dry_s == pytest.approx(0.30)
    assert player.max_dry_s == pytest.approx(0.30)
    # Playback resumed at 0.54 s with 4 frames: it ends 0.32 s later.
    assert player.ends == pytest.approx(0.54 + 0.32)
    # The older measure (against the first frame's schedule) counts the burst 4 times.
    assert player.late_frames == 4


def test_frames_on_the_shifted_schedule_are_not_underruns(player_cls):
    # After a stall, frames that keep up with the resumed playback are fine.
    frames = [(0.0, 0.08), (0.28, 0.08), (0.35, 0.08), (0.43, 0.08)]
    player = feed(player_cls(0.0), frames)
    assert player.underruns == 1
    assert player.dry_s == pytest.approx(0.20)


def test_threshold_counts_only_gaps_at_least_that_long(player_cls):
    frames = [(0.0, 0.08), (0.09, 0.08), (0.16, 0.08), (0.40, 0.08)]
    # Gaps: 10 ms (after the first frame) and 150 ms.
    strict = feed(player_cls(0.0), frames)
    assert strict.underruns == 2
    lenient = feed(player_cls(0.02), frames)
    assert lenient.underruns == 1
    assert lenient.dry_s == pytest.approx(0.15)
    assert lenient.max_dry_s == pytest.approx(0.15)
