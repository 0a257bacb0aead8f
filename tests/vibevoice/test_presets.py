"""Voice presets: the official pickle format read safely, converted to the current cache."""

from __future__ import annotations

import os
import pickletools
import zipfile
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from pipecat_vibevoice.models.vibevoice_realtime.presets import (
    BRANCHES,
    PresetError,
    find_presets,
    load_preset,
)


def test_official_preset_equals_its_safetensors_twin(fixture_dir: Path) -> None:
    preset = load_preset(fixture_dir / "voice_preset.pt")
    flat = load_file(str(fixture_dir / "voice_preset.safetensors"))
    lengths = {"lm": 7, "tts_lm": 12, "neg_lm": 1, "neg_tts_lm": 1}
    layers = {"lm": 1, "tts_lm": 2, "neg_lm": 1, "neg_tts_lm": 2}
    for branch in BRANCHES:
        got = getattr(preset, branch)
        assert got.length == lengths[branch] and len(got.keys) == layers[branch]
        assert torch.equal(got.last_hidden_state, flat[f"{branch}.last_hidden_state"])
        for i in range(layers[branch]):
            assert torch.equal(got.keys[i], flat[f"{branch}.past_key_values.{i}.key"])
            assert torch.equal(got.values[i], flat[f"{branch}.past_key_values.{i}.value"])
    preset.check_against(lower_layers=1, upper_layers=2, hidden=64)
    with pytest.raises(PresetError, match="layers"):
        preset.check_against(lower_layers=4, upper_layers=20, hidden=896)


def test_preset_becomes_a_current_dynamic_cache(tiny_model, tiny_preset) -> None:
    from transformers import DynamicCache

    cache = tiny_preset.tts_lm.make_cache(tiny_model.tts_language_model.config)
    assert isinstance(cache, DynamicCache)
    assert cache.get_seq_length() == 12 and len(cache.layers) == 2
    assert torch.equal(cache.layers[1].keys, tiny_preset.tts_lm.keys[1])
    # Growing the cache leaves the preset untouched.
    k = torch.zeros(1, 2, 1, 16)
    cache.update(k, k, 0)
    assert cache.get_seq_length(0) == 13 and tiny_preset.tts_lm.length == 12


class _RunsCode:
    """An object whose unpickling calls ``os.system`` (what a hostile preset does)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _evil_preset(path: Path, marker: Path, nested: bool) -> Path:
    payload = _RunsCode(marker)
    if nested:  # hidden inside an otherwise valid-looking structure
        data = {
            b: {"last_hidden_state": torch.zeros(1, 1, 4), "past_key_values": payload}
            for b in BRANCHES
        }
    else:
        data = {"lm": payload}
    torch.save(data, str(path))
    return path


@pytest.mark.parametrize("nested", [False, True])
def test_preset_that_runs_code_is_refused(tmp_path: Path, nested: bool) -> None:
    marker = tmp_path / "pwned"
    evil = _evil_preset(tmp_path / "evil.pt", marker, nested)
    # The file really carries the payload: its pickle calls os.system (posix.system).
    with zipfile.ZipFile(evil) as archive:
        pickle_name = next(n for n in archive.namelist() if n.endswith("data.pkl"))
        listing = []
        pickletools.dis(
            archive.read(pickle_name),
            out=type("W", (), {"write": lambda _, s: listing.append(s)})(),
        )
    assert any("system" in line for line in listing)

    with pytest.raises(PresetError, match=r"refusing voice preset .*system.* not allowed"):
        load_preset(evil)
    assert not marker.exists()


def test_malformed_presets_are_refused(tmp_path: Path) -> None:
    missing = tmp_path / "missing.pt"
    torch.save(
        {"lm": {"last_hidden_state": torch.zeros(1, 1, 4), "past_key_values": []}}, str(missing)
    )
    with pytest.raises(PresetError, match="lacks"):
        load_preset(missing)
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a zip or pickle at all")
    with pytest.raises(PresetError, match="cannot read"):
        load_preset(garbage)


def test_find_presets_lists_directories_in_order(tmp_path: Path, fixture_dir: Path) -> None:
    first, second = tmp_path / "a", tmp_path / "b" / "nested"
    first.mkdir()
    second.mkdir(parents=True)
    (first / "en-Zed_man.pt").symlink_to(fixture_dir / "voice_preset.pt")
    (second / "en-Amy_woman.pt").symlink_to(fixture_dir / "voice_preset.pt")
    (second / "en-Zed_man.pt").write_bytes(b"shadowed")
    found = find_presets([first, tmp_path / "b", tmp_path / "absent"])
    assert list(found) == ["en-Amy_woman", "en-Zed_man"]
    assert found["en-Zed_man"] == first / "en-Zed_man.pt"
