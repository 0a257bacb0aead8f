"""The tiny VibeVoice-Realtime fixture, a test-time tokenizer and a loaded model.

The fixture model has no tokenizer files. The Qwen2.5 tokenizer cannot be fetched
offline, so a small byte-level BPE with Qwen2's pre-tokenizer regex is trained here in a
temporary directory (ids stay below the tiny vocab of 4096), and the model directory is
a temporary folder of symlinks to the fixture files plus that tokenizer: nothing from
the fixtures is copied into the repository.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("diffusers")

FIXTURE = (
    Path(__file__).resolve().parents[2] / ".." / "shared" / "fixtures" / "vibevoice-realtime-tiny"
).resolve()

#: Qwen2's pre-tokenizer pattern (the split that makes our streaming cut rule exact).
QWEN2_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)

CORPUS = [
    "Hello there, my friend. How are you doing today?",
    "The quick brown fox jumps over the lazy dog; it was 3.5 metres away!",
    "Streaming speech starts as soon as the first window of text is ready.",
    "Voice bots answer in real time: they listen, think, and speak.",
    "It's a nice day, isn't it? We'll see what they're saying.\nNew line here.",
    'Numbers like 2024 and 42, symbols like #, %, & and quotes "like this".',
]


def build_tiny_tokenizer(path: Path, vocab_size: int = 400) -> Path:
    """Train a byte-level BPE with Qwen2's split regex; save ``tokenizer.json``."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(QWEN2_SPLIT), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(CORPUS * 4, trainer)
    out = path / "tokenizer.json"
    tokenizer.save(str(out))
    return out


def link_model_dir(target: Path, tokenizer: Path | None, with_preset: bool = True) -> Path:
    """A model directory of symlinks to the fixture (plus the tokenizer, if given)."""
    target.mkdir(parents=True, exist_ok=True)
    for name in ("config.json", "model.safetensors", "preprocessor_config.json"):
        (target / name).symlink_to(FIXTURE / name)
    if with_preset:
        voices = target / "voices"
        voices.mkdir()
        (voices / "voice_preset.pt").symlink_to(FIXTURE / "voice_preset.pt")
    if tokenizer is not None:
        (target / "tokenizer.json").symlink_to(tokenizer)
    return target


@pytest.fixture(scope="session")
def fixture_dir() -> Path:
    """The tiny-model fixture folder; its absence is a broken checkout, not a skip."""
    assert (FIXTURE / "config.json").is_file(), f"missing fixture {FIXTURE}"
    return FIXTURE


@pytest.fixture(scope="session")
def tokenizer_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``tokenizer.json`` of the test-time tiny tokenizer."""
    return build_tiny_tokenizer(tmp_path_factory.mktemp("tokenizer"))


@pytest.fixture(scope="session")
def encode(tokenizer_file: Path):
    """Text → (token ids, character offsets) with the tiny tokenizer, as the backend."""
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(tokenizer_file))

    def _encode(text: str):
        enc = tokenizer.encode(text, add_special_tokens=False)
        return list(enc.ids), [tuple(o) for o in enc.offsets]

    return _encode


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory: pytest.TempPathFactory, tokenizer_file: Path, fixture_dir) -> Path:
    """A complete model directory: fixture weights, preset and tokenizer (symlinks)."""
    return link_model_dir(tmp_path_factory.mktemp("tiny-model") / "model", tokenizer_file)


@pytest.fixture(scope="session")
def tiny_model(fixture_dir: Path):
    """The fixture model loaded on CPU in float32 (shared: the model is stateless)."""
    from pipecat_vibevoice.models.vibevoice_realtime.checkpoint import load_model

    torch.manual_seed(0)
    return load_model(fixture_dir)


@pytest.fixture(scope="session")
def tiny_preset(fixture_dir: Path):
    """The fixture voice preset, converted."""
    from pipecat_vibevoice.models.vibevoice_realtime.presets import load_preset

    return load_preset(fixture_dir / "voice_preset.pt")


@pytest.fixture(scope="session")
def tiny_model64(tiny_model):
    """The same model in float64, with no float32 step inside (see ``numerics``)."""
    from .numerics import float64_reference

    return float64_reference(tiny_model)


@pytest.fixture(scope="session")
def tiny_preset64(tiny_preset):
    """The fixture voice preset in float64."""
    return tiny_preset.to("cpu", torch.float64)


def load_npy(run: str, name: str) -> np.ndarray:
    """An array of one of the two recorded generations."""
    return np.load(FIXTURE / f"generate_{run}" / f"{name}.npy")


@pytest.fixture
def no_eos(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make the EOS head say "not yet" (logit −4, the fixture's designed value).

    The tiny model's EOS head was fitted to the two recorded trajectories only; on any
    other text it fires after a random handful of latents. Tests of streaming behaviour
    that need long utterances switch it off; the parity tests keep the real head.
    """
    from pipecat_vibevoice.models.vibevoice_realtime.modeling_vibevoice_realtime import (
        VibeVoiceRealtimeModel,
    )

    def never(self, hidden):
        return torch.full((hidden.shape[0],), -4.0, device=hidden.device)

    monkeypatch.setattr(VibeVoiceRealtimeModel, "eos_logit", never)


@pytest.fixture(scope="package", autouse=True)
def one_torch_thread():
    """Run this package's tests on one torch thread, then restore the setting.

    The tiny model's ops are microseconds long; on a shared 2-core machine, torch's
    intra-op threads spin against other processes and a run gets ~25x slower
    (measured: 222 vs 8 latents/s). Results stay within the fixture tolerances.
    """
    previous = torch.get_num_threads()
    # bench/vibevoice_numerics.py runs the parity checks on other thread counts too.
    torch.set_num_threads(int(os.environ.get("PIPECAT_VIBEVOICE_TEST_TORCH_THREADS", "1")))
    yield
    torch.set_num_threads(previous)


class CallCounter:
    """Counts calls of some of a model's methods (instance patch, undone by monkeypatch)."""

    def __init__(self, model, monkeypatch, *names: str) -> None:
        self.calls = dict.fromkeys(names, 0)
        for name in names:
            original = getattr(model, name)

            def wrapper(*args, _name=name, _original=original, **kwargs):
                self.calls[_name] += 1
                return _original(*args, **kwargs)

            monkeypatch.setattr(model, name, wrapper)
