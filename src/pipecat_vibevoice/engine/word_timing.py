"""When each word of the text starts in the audio: the rules both voices share.

A *word* is a run of non-whitespace characters of the request text, punctuation
included ("friend." is one word), and it is named by the position of its first
character. That is how a listener-side consumer (Pipecat's word tracker, a client of the
TTS socket) can match the words back to the text it sent, and why a word is only given
a time once it is complete in the text.

Backends mark each word's start inside the audio piece that speaks it (see
:class:`~.backends.base.AudioPiece`); the chunk assembler turns those marks into seconds
from the start of the utterance's audio (:class:`~.chunks.SpanTimeline`).

* **Piper** knows per-phoneme durations (the duration predictor's frame counts, which
  the backend reads out of its frontend graph). :func:`place_words` says where each
  word's first sound is in the sentence's phoneme ids, :func:`start_frame` turns that
  into a frame once the durations are known.
* **VibeVoice** knows only which 5-token text window drove each latent:
  :class:`WindowWords` spreads the words of a window over that window's latents.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from difflib import SequenceMatcher

__all__ = [
    "PhonemeClasses",
    "PhonemePlace",
    "WindowWords",
    "place_words",
    "start_frame",
    "text_words",
    "word_at",
    "word_starts",
]

#: Below this share of the words' own phonemes found in the sentence, in order, the
#: alignment is not trusted and words are spread by character length instead.
MIN_MATCHED_SHARE = 0.5


# -- words of the text ------------------------------------------------------------------


def word_starts(text: str, start: int = 0, end: int | None = None) -> Iterator[int]:
    """Positions in ``text[start:end]`` where a word starts (a non-space after a space)."""
    stop = len(text) if end is None else min(end, len(text))
    for pos in range(max(0, start), stop):
        if not text[pos].isspace() and (pos == 0 or text[pos - 1].isspace()):
            yield pos


def word_at(text: str, pos: int) -> str:
    """The word that starts at ``pos`` (up to the next whitespace)."""
    end = pos
    while end < len(text) and not text[end].isspace():
        end += 1
    return text[pos:end]


def text_words(text: str) -> list[tuple[int, str]]:
    """Every word of ``text`` with the position of its first character."""
    return [(pos, word_at(text, pos)) for pos in word_starts(text)]


# -- Piper: phonemes ----------------------------------------------------------------------


@dataclass(frozen=True)
class PhonemeClasses:
    """What the ids of a Piper voice are: word breaks, sounds, and the rest.

    Piper interleaves the pad id after every phoneme and wraps a sentence in bos/eos;
    espeak separates words with the space phoneme and keeps punctuation and stress marks
    as phonemes of their own. Only *sounds* are matched between a word said alone and
    the sentence (stress and punctuation move with context); a sound is every id that
    is none of those.
    """

    space: frozenset[int]
    quiet: frozenset[int]

    @classmethod
    def from_id_map(cls, id_map: Mapping[str, Sequence[int]]) -> PhonemeClasses:
        """Classes from a voice's ``phoneme_id_map`` (Piper's config)."""
        space = frozenset(id_map.get(" ", ()))
        quiet: set[int] = set()
        for phoneme, ids in id_map.items():
            if phoneme in ("_", "^", "$", "ˈ", "ˌ") or all(
                unicodedata.category(ch).startswith("P") for ch in phoneme
            ):
                quiet.update(ids)
        return cls(space=space, quiet=frozenset(quiet - space))

    def is_sound(self, phoneme_id: int) -> bool:
        """True for ids that are heard (not pad, bos/eos, space, punctuation or stress)."""
        return phoneme_id not in self.space and phoneme_id not in self.quiet


@dataclass(frozen=True)
class PhonemePlace:
    """Where a word starts in one sentence of Piper's phoneme ids.

    ``index`` is the id of the word's first sound when the alignment found it; then
    its start frame is the sum of the durations before it. ``fraction`` (0..1) is the
    word's place in the sentence's speech by character length, used when there is no
    ``index`` or no durations.
    """

    sentence: int
    index: int | None
    fraction: float


def _sound_spans(ids: Sequence[int], classes: PhonemeClasses) -> list[int]:
    """Indices of the sounds among ``ids``."""
    return [i for i, pid in enumerate(ids) if classes.is_sound(pid)]


def place_words(
    words: Sequence[tuple[str, Sequence[int]]],
    sentences: Sequence[Sequence[int]],
    classes: PhonemeClasses,
) -> list[PhonemePlace]:
    """Where each word of a text starts among the phoneme ids of its sentences.

    ``words`` are the text's words with the phoneme ids of each word said alone;
    ``sentences`` the ids of the whole text as Piper speaks it (one list per sentence
    espeak found). espeak's words are not the text's: it joins some ("of the" →
    ``ʌvðə``), splits others ("42" → ``fˈɔːɹɾi tˈuː``) and says punctuation in a few
    ("&" → ``ænd``), so counting word breaks fails on ordinary sentences. Instead the
    sounds of the words said alone, in order, are aligned with the sounds of the
    sentences (longest common blocks); a word starts where its first aligned sound
    lands (less the sounds of it not found before it). Words with no aligned sound
    ("-", a word pronounced differently in context) are put between their neighbours.

    When fewer than :data:`MIN_MATCHED_SHARE` of the words' sounds align (another
    language, numbers espeak reads otherwise in context, text normalisation), the
    alignment is not trusted and every word falls back to its share of the text by
    character length: each sentence takes the words whose share of characters falls in
    its share of the sounds, spread over its speech by character length. The fallback
    never fails, so odd text costs timing precision, never the audio.
    """
    if not sentences or not words:
        return []
    sentence_sounds = [_sound_spans(ids, classes) for ids in sentences]
    flat: list[tuple[int, int]] = [(s, i) for s, idx in enumerate(sentence_sounds) for i in idx]
    targets = [sentences[s][i] for s, i in flat]
    word_sounds = [[pid for pid in ids if classes.is_sound(pid)] for _, ids in words]
    sources: list[int] = []
    owner: list[tuple[int, int]] = []  # (word, offset in the word) per source sound
    for w, sounds in enumerate(word_sounds):
        sources.extend(sounds)
        owner.extend((w, k) for k in range(len(sounds)))
    matched: dict[int, int] = {}
    if sources and targets:
        matcher = SequenceMatcher(None, sources, targets, autojunk=False)
        for block in matcher.get_matching_blocks():
            for k in range(block.size):
                matched[block.a + k] = block.b + k
    if not sources or len(matched) < MIN_MATCHED_SHARE * len(sources):
        return _places_by_length(words, sentence_sounds)

    # Each word's position among the target sounds (None: no sound of it aligned).
    position: list[float | None] = [None] * len(words)
    for src, tgt in sorted(matched.items()):
        word, offset = owner[src]
        if position[word] is None:
            position[word] = float(max(0, tgt - offset))
    _fill_between(position, len(targets))
    first_of = [0] * len(sentences)  # index in ``flat`` of each sentence's first sound
    for k in range(len(flat) - 1, -1, -1):
        first_of[flat[k][0]] = k
    places: list[PhonemePlace] = []
    floor = 0.0
    for pos in position:
        assert pos is not None
        pos = min(max(pos, floor), len(targets) - 1)  # words start in order
        floor = pos
        sentence, index = flat[int(pos)]
        rank = int(pos) - first_of[sentence]
        places.append(PhonemePlace(sentence, index, rank / len(sentence_sounds[sentence])))
    return places


def _fill_between(position: list[float | None], total: int) -> None:
    """Give words without a position one between their neighbours' (in place)."""
    known = [i for i, p in enumerate(position) if p is not None]
    for i, p in enumerate(position):
        if p is not None:
            continue
        before = max((k for k in known if k < i), default=None)
        after = min((k for k in known if k > i), default=None)
        lo = position[before] if before is not None else 0.0
        hi = position[after] if after is not None else float(total - 1)
        assert lo is not None and hi is not None
        span_lo = before if before is not None else -1
        span_hi = after if after is not None else len(position)
        position[i] = lo + (hi - lo) * (i - span_lo) / (span_hi - span_lo)


def _length_fractions(
    words: Sequence[tuple[str, Sequence[int]]], sentence_sounds: Sequence[Sequence[int]]
) -> list[tuple[int, float]]:
    """(sentence, fraction of its speech) of each word by character length.

    A word's share of the text's characters before it is matched against the
    sentences' shares of the text's sounds, which says its sentence and its place in it.
    """
    sizes = [max(1, len(s)) for s in sentence_sounds]
    total_sounds = sum(sizes)
    bounds = [0.0]
    for size in sizes:
        bounds.append(bounds[-1] + size / total_sounds)
    lengths = [len(word) + 1 for word, _ in words]
    total_chars = sum(lengths)
    out: list[tuple[int, float]] = []
    before = 0
    sentence = 0
    for length in lengths:
        share = before / total_chars
        while sentence < len(sizes) - 1 and share >= bounds[sentence + 1]:
            sentence += 1
        width = bounds[sentence + 1] - bounds[sentence]
        out.append((sentence, min(1.0, max(0.0, (share - bounds[sentence]) / width))))
        before += length
    return out


def _places_by_length(
    words: Sequence[tuple[str, Sequence[int]]], sentence_sounds: Sequence[Sequence[int]]
) -> list[PhonemePlace]:
    return [PhonemePlace(s, None, f) for s, f in _length_fractions(words, sentence_sounds)]


def start_frame(
    place: PhonemePlace,
    ids: Sequence[int],
    durations: Sequence[int] | None,
    frames: int,
    classes: PhonemeClasses,
) -> int:
    """The frame of the sentence's latent where a word starts.

    With the duration predictor's frame counts (one per id, summing to ``frames``) and
    an aligned ``index`` this is exact to the frame (11.6 ms with Piper's 256-sample
    hop). Otherwise the word's ``fraction`` of the speech between the sentence's first
    sound and the end of its last one (from the durations when known, else the whole
    latent).
    """
    last = max(0, frames - 1)
    if durations is None or len(durations) != len(ids):
        return min(last, round(place.fraction * frames))
    before = [0]
    for d in durations:
        before.append(before[-1] + int(d))
    if place.index is not None:
        return min(last, before[place.index])
    sounds = _sound_spans(ids, classes)
    lo = before[sounds[0]] if sounds else 0
    hi = before[sounds[-1] + 1] if sounds else frames
    return min(last, lo + round(place.fraction * max(0, hi - lo)))


# -- VibeVoice: text windows ------------------------------------------------------------


class WindowWords:
    """Window-level word timing for a model that reads text in windows (VibeVoice).

    VibeVoice-Realtime reads 5 text tokens, then speaks ``latents_per_window`` latents
    (6 × 3 200 samples = 0.8 s at 24 kHz) conditioned on them; nothing inside the model
    says which latent speaks which word. So this is **window-level timing**: each word
    whose first character lies in a window's text gets a start inside that window's
    speech, the window's words spread in text order over its latents (word ``i`` of
    ``k`` at ``i / k`` of the window). A word is never timed before the window that
    reads it, which is what matters after an interruption; within a window the time is
    an estimate of up to a few hundred milliseconds.
    """

    def __init__(self, latents_per_window: int) -> None:
        self.latents_per_window = latents_per_window
        self._window: int | None = None
        self._step = 0
        self._cursor = 0  # text before this was given to earlier windows
        self._pending: list[int] = []  # the current window's word positions
        self._next = 0  # first pending word not placed yet

    def latent(
        self, window: int, span: tuple[int, int] | None, text: str, samples: int
    ) -> tuple[tuple[int, int], ...]:
        """Words that start in this latent: (character position, sample in the latent).

        ``window`` numbers the text windows, ``span`` is the window's character range
        of ``text`` (``None`` or empty for speech after the text), ``samples`` the
        latent's audio length. Call once per latent, in order.
        """
        out: list[tuple[int, int]] = []
        if window != self._window:
            out.extend((pos, 0) for pos in self.rest())  # a window cut short
            self._window, self._step = window, 0
            if span is not None and span[1] > span[0]:
                end = max(span[1], self._cursor)
                self._pending = list(word_starts(text, self._cursor, end))
                self._cursor = end
            else:
                self._pending = []
            self._next = 0
        step, self._step = self._step, self._step + 1
        count = len(self._pending)
        while self._next < count:
            at = self._next * self.latents_per_window / count  # in latents from the window
            if at >= step + 1:
                break
            offset = round(max(0.0, at - step) * samples)
            out.append((self._pending[self._next], min(offset, max(0, samples - 1))))
            self._next += 1
        return tuple(out)

    def rest(self) -> list[int]:
        """Words of the current window not placed yet (the model ended before them)."""
        rest = self._pending[self._next :]
        self._next = len(self._pending)
        return rest
