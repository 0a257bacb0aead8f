"""The ``pipecat-vibevoice`` command, run as a user would (subprocess)."""

from __future__ import annotations

import subprocess
import sys
import wave
from pathlib import Path

import pytest

CLI = [sys.executable, "-m", "pipecat_vibevoice.cli"]


def run(
    *args: str, stdin: str | None = None, cwd: Path | None = None
) -> subprocess.CompletedProcess:
    return subprocess.run(
        [*CLI, *args], input=stdin, capture_output=True, text=True, timeout=120, cwd=cwd
    )


def wav_seconds(path: Path) -> float:
    with wave.open(str(path)) as wav:
        assert (wav.getnchannels(), wav.getsampwidth()) == (1, 2)
        return wav.getnframes() / wav.getframerate()


@pytest.mark.parametrize("args", [["--help"], ["say", "--help"]])
def test_help(args: list[str]) -> None:
    result = run(*args)
    assert result.returncode == 0
    assert "usage:" in result.stdout


def test_say_writes_a_wav_and_prints_figures(tmp_path: Path) -> None:
    out = tmp_path / "hello.wav"
    result = run("say", "Hello from the command line.", "-o", str(out), "--engine", "piper")
    assert result.returncode == 0, result.stderr
    assert 1.0 < wav_seconds(out) < 5.0
    assert "first_chunk=" in result.stdout and "rtf=" in result.stdout


def test_say_reads_stdin_and_honours_speed(tmp_path: Path) -> None:
    normal, fast = tmp_path / "n.wav", tmp_path / "f.wav"
    text = "Reading this sentence from standard input."
    assert run("say", "-o", str(normal), "--engine", "piper", stdin=text).returncode == 0
    assert (
        run("say", "-", "-o", str(fast), "--speed", "2", "--engine", "piper", stdin=text).returncode
        == 0
    )
    assert wav_seconds(fast) / wav_seconds(normal) == pytest.approx(0.5, rel=0.1)


def test_say_file_writes_one_wav_per_line_with_progress(tmp_path: Path) -> None:
    lines = tmp_path / "lines.txt"
    lines.write_text("First line.\n\nSecond line.\nThird line.\n", encoding="utf-8")
    outdir = tmp_path / "out"
    result = run("say", "--file", str(lines), "-o", str(outdir), "--engine", "piper")
    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in outdir.iterdir()) == ["0001.wav", "0003.wav", "0004.wav"]
    assert "3/3" in result.stderr  # the progress bar
    assert "wrote 3/3 files" in result.stdout


def test_list_voices() -> None:
    result = run("say", "--list-voices", "--engine", "piper")
    assert result.returncode == 0
    assert "en_US-joe-medium" in result.stdout


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["say", "   "], "empty"),
        (["say", "hi", "--voice", "nobody"], "available voices: en_US-joe-medium"),
        (["say", "hi", "--pitch", "5"], "maximum of 2.0"),
        (["say", "hi", "--sample-rate", "100"], "sample_rate"),
    ],
)
def test_bad_input_gives_a_clear_error(tmp_path: Path, args: list[str], message: str) -> None:
    result = run(*args, "--engine", "piper", cwd=tmp_path)
    assert result.returncode == 2
    assert message in result.stderr
    assert "Traceback" not in result.stderr


def test_say_with_a_seed_is_reproducible(tmp_path: Path) -> None:
    """VITS samples its noise: the same --seed gives the same file, another seed not."""
    text = "Reproducible speech. Two sentences of it."
    paths = [tmp_path / f"{name}.wav" for name in ("a", "b", "c")]
    for path, seed in zip(paths, ("7", "7", "8"), strict=True):
        result = run("say", text, "-o", str(path), "--seed", seed, "--engine", "piper")
        assert result.returncode == 0, result.stderr
    a, b, c = (path.read_bytes() for path in paths)
    assert a == b
    assert a != c
