"""Word timestamps: the shared rules, and Piper's against the audio it actually produces."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from pipecat_vibevoice.engine import GrowingText, TTSConfig, TTSEngine
from pipecat_vibevoice.engine.backends.piper import SENTENCE_PAUSE_S
from pipecat_vibevoice.engine.backends.piper_graph import (
    DURATIONS_OUTPUT,
    ensure_timed_frontend,
    find_durations_tensor,
)
from pipecat_vibevoice.engine.chunks import SpanTimeline
from pipecat_vibevoice.engine.word_timing import (
    PhonemeClasses,
    PhonemePlace,
    WindowWords,
    place_words,
    start_frame,
    text_words,
    word_at,
    word_starts,
)

#: Two sentences with no comma: the only long pause in the audio is between them.
TWO_SENTENCES = "The lamp was lit at dusk. Ships passed the rocks in silence."

# -- the shared rules, on made-up ids ------------------------------------------------------

#: A toy phoneme inventory in Piper's layout: pad 0, bos 1, eos 2, space 3, "." 10.
ID_MAP = {"_": [0], "^": [1], "$": [2], " ": [3], ".": [10], "ˈ": [120]}
ID_MAP.update({ch: [20 + i] for i, ch in enumerate("abcdefghijklmnopqrstuvwxyz")})
CLASSES = PhonemeClasses.from_id_map(ID_MAP)


def ids_of(phonemes: str) -> list[int]:
    """Piper's ids for a phoneme string: bos, pad after each phoneme, eos."""
    ids = [1, 0]
    for ch in phonemes:
        ids += [*ID_MAP[ch], 0]
    return ids + [2]


def test_words_are_runs_of_non_space_named_by_their_first_character() -> None:
    text = "  Hello, world!\n\nIt's 3.5 — fine."
    assert text_words(text) == [
        (2, "Hello,"),
        (9, "world!"),
        (17, "It's"),
        (22, "3.5"),
        (26, "—"),
        (28, "fine."),
    ]
    assert list(word_starts(text, 9, 23)) == [9, 17, 22]
    assert word_at(text, 22) == "3.5"


def test_phoneme_classes_keep_only_sounds() -> None:
    assert CLASSES.space == {3}
    assert {0, 1, 2, 10, 120} <= CLASSES.quiet
    assert CLASSES.is_sound(20) and not CLASSES.is_sound(3) and not CLASSES.is_sound(120)


def test_words_align_through_joins_and_splits() -> None:
    # espeak joins "of the" into one word and reads "42" as two.
    sentence = ids_of("ˈaa bb ccdd eeff gg.")
    words = [("A", ids_of("aa")), ("b", ids_of("bb")), ("c", ids_of("cc"))]
    words += [("d", ids_of("dd")), ("42", ids_of("ee ff")), ("g.", ids_of("gg"))]
    places = place_words(words, [sentence], CLASSES)
    assert [p.sentence for p in places] == [0] * 6
    starts = [sentence[p.index] for p in places]
    assert starts == [ID_MAP[c][0] for c in "abcdeg"]  # each at its first sound
    assert [p.index for p in places] == sorted(p.index for p in places)


def test_words_find_their_sentence() -> None:
    first, second = ids_of("aa bb."), ids_of("cc dd.")
    words = [(w, ids_of(p)) for w, p in [("a", "aa"), ("b.", "bb"), ("C", "cc"), ("d.", "dd")]]
    places = place_words(words, [first, second], CLASSES)
    assert [(p.sentence, p.index) for p in places] == [(0, 2), (0, 8), (1, 2), (1, 8)]


def test_unaligned_text_falls_back_to_character_length() -> None:
    # Nothing of the words is in the sentence (another reading, another language).
    sentence = ids_of("zz yy xx ww")
    words = [(w, ids_of("ab")) for w in ("one", "two", "three", "four")]
    places = place_words(words, [sentence], CLASSES)
    assert all(p.index is None for p in places)
    fractions = [p.fraction for p in places]
    assert fractions[0] == 0.0 and fractions == sorted(fractions) and fractions[-1] < 1.0
    # Spread over the speech by length (a word and its space): "three" after "one two "
    # (8 of the 19 characters).
    assert fractions[2] == pytest.approx(8 / 19)
    durations = [2] * len(sentence)
    frames = sum(durations)
    starts = [start_frame(p, sentence, durations, frames, CLASSES) for p in places]
    assert starts == sorted(starts) and starts[0] == 4  # bos, pad: the first sound
    # Without durations the fraction is of the whole latent.
    assert start_frame(places[2], sentence, None, 100, CLASSES) == round(100 * 8 / 19)


def test_a_word_with_no_sound_sits_between_its_neighbours() -> None:
    sentence = ids_of("aa bb")
    words = [("a", ids_of("aa")), ("-", []), ("b", ids_of("bb"))]
    a, dash, b = place_words(words, [sentence], CLASSES)
    assert a.index is not None and b.index is not None and dash.index is not None
    assert a.index < dash.index <= b.index


def test_start_frame_sums_the_durations_before_the_word() -> None:
    ids = ids_of("ab cd")
    durations = list(range(len(ids)))
    place = PhonemePlace(0, ids.index(ID_MAP["c"][0]), 0.5)
    assert start_frame(place, ids, durations, sum(durations), CLASSES) == sum(
        durations[: place.index]
    )


def test_window_words_spread_each_window_over_its_latents() -> None:
    text = "one two three four five six seven"
    words = WindowWords(latents_per_window=6)
    # Window 0 reads "one two three " (3 words), window 1 the rest (4 words).
    marks = [words.latent(0, (0, 14), text, 3200) for _ in range(6)]
    marks += [words.latent(1, (14, len(text)), text, 3200) for _ in range(6)]
    placed = [(latent, pos, offset) for latent, m in enumerate(marks) for pos, offset in m]
    assert [text[p:].split()[0] for _, p, _ in placed] == text.split()
    # 3 words over 6 latents: latents 0, 2, 4; 4 words: 0, 1.5, 3, 4.5 of window 1.
    assert [(latent, offset) for latent, _, offset in placed] == [
        (0, 0),
        (2, 0),
        (4, 0),
        (6, 0),
        (7, 1600),
        (9, 0),
        (10, 1600),
    ]
    assert words.rest() == []


def test_window_words_left_over_when_the_model_stops_early() -> None:
    text = "alpha beta gamma"
    words = WindowWords(latents_per_window=6)
    assert words.latent(0, (0, len(text)), text, 3200) == ((0, 0),)
    assert words.rest() == [6, 11]
    # Speech after the text (an empty span) starts no words.
    assert words.latent(1, (16, 16), text, 3200) == ()


def test_timeline_carries_word_marks_through_the_rate_ratio() -> None:
    timeline = SpanTimeline(ratio=2.0)
    timeline.add(100, (0, 5), [(0, 0), (3, 50)])
    timeline.add(0, None, [(9, 0)])  # a mark with no audio: at the end so far
    timeline.add(100, (6, 10), [(6, 10)])
    assert timeline.take_words(150) == [(0.0, 0), (100.0, 3)]
    assert timeline.take_words(None) == [(200.0, 9), (220.0, 6)]


# -- Piper, for real ------------------------------------------------------------------


def _quiet_runs(pcm: bytes, rate: int, window_s: float = 0.01) -> list[tuple[float, float]]:
    """(start, end) seconds of runs of 10 ms windows below -40 dBFS RMS."""
    audio = np.frombuffer(pcm, "<i2").astype(np.float32) / 32768
    win = int(rate * window_s)
    env = np.sqrt(np.mean(audio[: audio.size // win * win].reshape(-1, win) ** 2, axis=1))
    runs, start = [], None
    for i, quiet in enumerate(env < 0.01):
        if quiet and start is None:
            start = i
        elif not quiet and start is not None:
            runs.append((start * window_s, i * window_s))
            start = None
    return runs


async def test_piper_durations_come_from_the_duration_predictor(piper_engine: TTSEngine) -> None:
    backend = piper_engine.backend
    assert backend._frontend_path.name.endswith(".frontend-durations.onnx")
    for seed in (None, 7):
        ids = backend.phoneme_ids(TWO_SENTENCES)[0]
        latent, mask, durations = backend.run_frontend(ids, backend._scales, seed)
        assert durations is not None and durations.shape == (len(ids),)
        assert durations.min() >= 0 and durations.sum() == latent.shape[2] == mask.shape[2]
    # The seeded path replays its durations (they are sampled: duration noise).
    _, _, again = backend.run_frontend(ids, backend._scales, 7)
    assert np.array_equal(again, durations)


def test_timed_frontend_is_made_by_graph_surgery_once(piper_engine: TTSEngine, tmp_path) -> None:
    import onnx

    plain = Path(str(piper_engine.backend._frontend_path).replace("-durations", ""))
    copy = tmp_path / plain.name
    shutil.copy(plain, copy)
    timed = ensure_timed_frontend(copy)
    assert timed.parent == tmp_path and timed.is_file()
    model = onnx.load(str(timed))
    assert DURATIONS_OUTPUT in [o.name for o in model.graph.output]
    source = next(n for n in model.graph.node if n.output[0] == DURATIONS_OUTPUT).input[0]
    producer = next(n for n in model.graph.node if source in n.output)
    assert producer.op_type == "Ceil" and find_durations_tensor(model) == source
    assert any(n.op_type == "CumSum" and source in n.input for n in model.graph.node)
    made = timed.stat().st_mtime_ns
    assert ensure_timed_frontend(copy) == timed and timed.stat().st_mtime_ns == made


async def test_piper_word_times_match_the_audio(piper_engine: TTSEngine) -> None:
    chunks = [c async for c in piper_engine.stream_chunks(TWO_SENTENCES, seed=3)]
    words = [w for c in chunks for w in c.words]
    assert [w for w, _ in words] == TWO_SENTENCES.split()
    times = [t for _, t in words]
    assert times == sorted(times) and len(set(times)) == len(times)
    total = chunks[-1].end_s
    assert 0 < times[0] < 0.2 and times[-1] < total - 0.2
    for c in chunks:
        assert all(c.start_s <= t <= c.end_s for _, t in c.words)
    # The long pause between the sentences: the first word of the second starts where
    # the audio comes back, the last of the first long before the pause.
    pcm = b"".join(c.pcm for c in chunks)
    runs = [r for r in _quiet_runs(pcm, 24000) if r[0] > 0.2 and r[1] < total - 0.2]
    pause = max(runs, key=lambda r: r[1] - r[0])
    assert pause[1] - pause[0] > SENTENCE_PAUSE_S
    ships = times[TWO_SENTENCES.split().index("Ships")]
    assert pause[1] - 0.06 <= ships <= pause[1] + 0.08
    assert times[TWO_SENTENCES.split().index("dusk.")] < pause[0] - 0.1


async def test_piper_word_times_follow_speed_and_rate() -> None:
    async def times(engine: TTSEngine, **kwargs) -> tuple[np.ndarray, float]:
        chunks = [c async for c in engine.stream_chunks(TWO_SENTENCES, seed=5, **kwargs)]
        return np.array([t for c in chunks for _, t in c.words]), chunks[-1].end_s

    fast = TTSEngine(TTSConfig(engine="piper", sample_rate=16000))
    await fast.initialize()
    try:
        base, base_s = await times(fast)
        double, double_s = await times(fast, speed=2.0)
    finally:
        await fast.cleanup()
    assert len(base) == len(double) == len(TWO_SENTENCES.split())
    # Piper's speed is native (shorter phoneme durations, not a uniform stretch): the
    # audio lasts about half as long and each word keeps its place in it.
    assert double_s == pytest.approx(base_s / 2, rel=0.10)
    assert np.allclose(double / double_s, base / base_s, atol=0.04)


async def test_piper_words_of_a_growing_text_and_of_odd_text(piper_engine: TTSEngine) -> None:
    text = GrowingText()
    parts = ["It costs 3.5 euros", ", or 42 dollars & 50% off! ", "Dr. Smith's dog - a poodle."]
    for part in parts:
        text.append(part)
    text.close()
    chunks = [c async for c in piper_engine.stream_chunks(text, seed=1)]
    words = [w for c in chunks for w in c.words]
    assert [w for w, _ in words] == "".join(parts).split()
    times = [t for _, t in words]
    assert times == sorted(times) and times[-1] < chunks[-1].end_s


async def test_piper_words_over_many_segments(piper_engine: TTSEngine) -> None:
    text = " ".join(["Every sentence here is one more line of a long story."] * 12)
    chunks = [c async for c in piper_engine.stream_chunks(text)]
    times = [t for c in chunks for _, t in c.words]
    assert [w for c in chunks for w, _ in c.words] == text.split()
    assert times == sorted(times)
