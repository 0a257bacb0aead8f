"""Checkpoint compatibility: official names/shapes, loading rules, fast refusals."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import torch

from pipecat_vibevoice.models.vibevoice_realtime.checkpoint import (
    CheckpointNotFoundError,
    from_pretrained,
    load_model,
    official_to_local,
    resolve_model_dir,
)
from pipecat_vibevoice.models.vibevoice_realtime.configuration_vibevoice_realtime import (
    VibeVoiceRealtimeConfig,
)
from pipecat_vibevoice.models.vibevoice_realtime.modeling_vibevoice_realtime import (
    VibeVoiceRealtimeModel,
)

from .conftest import link_model_dir


def test_real_05b_names_and_shapes_on_meta(fixture_dir: Path) -> None:
    """Our model built with the real 0.5B config takes exactly the official tensors."""
    spec = json.loads((fixture_dir / "real-0.5b-parameter-shapes.json").read_text())
    config = VibeVoiceRealtimeConfig.from_dict(spec["config_used"])
    with torch.device("meta"):
        model = VibeVoiceRealtimeModel(config)
    ours = {k: tuple(v.shape) for k, v in model.state_dict().items()}

    official = {p["name"]: tuple(p["shape"]) for p in spec["parameters"]}
    official.update({b["name"]: tuple(b["shape"]) for b in spec["buffers"] if b["persistent"]})
    mapped: dict[str, tuple[int, ...]] = {}
    skipped = []
    for name, shape in official.items():
        local = official_to_local(name)
        if local is None:
            skipped.append(name)
            continue
        assert local not in mapped, f"two official tensors map onto {local}"
        mapped[local] = shape
    # Only the acoustic encoder (absent from the published checkpoint) is skipped.
    assert skipped and all(n.startswith("model.acoustic_tokenizer.encoder.") for n in skipped)
    expected_in_ckpt = [p for p in spec["parameters"] if p["in_published_checkpoint"] == "expected"]
    assert len(skipped) == len(spec["parameters"]) - len(expected_in_ckpt)
    assert set(mapped) == set(ours), (
        f"unmapped ours: {sorted(set(ours) - set(mapped))[:5]}, "
        f"unknown official: {sorted(set(mapped) - set(ours))[:5]}"
    )
    wrong = {k: (mapped[k], ours[k]) for k in ours if mapped[k] != ours[k]}
    assert not wrong, f"shape mismatches: {list(wrong.items())[:5]}"
    assert (
        sum(v.numel() for v in model.parameters())
        == spec["n_parameters_excluding_acoustic_encoder"]
    )


def test_unknown_official_name_is_an_error() -> None:
    with pytest.raises(KeyError):
        official_to_local("model.semantic_tokenizer.encoder.conv.weight")
    with pytest.raises(KeyError):
        official_to_local("lm_head.weight")


def test_fixture_loads_every_tensor_bit_exactly(tiny_model, fixture_dir: Path) -> None:
    from safetensors.torch import load_file

    official = load_file(str(fixture_dir / "model.safetensors"))
    ours = tiny_model.state_dict()
    for name, tensor in official.items():
        local = official_to_local(name)
        assert local is not None
        assert torch.equal(ours[local], tensor), name
    # Non-persistent buffers were rebuilt, not left empty.
    assert torch.isfinite(tiny_model.prediction_head.timestep_embedding.freq).all()
    assert not tiny_model.language_model.rotary_emb.inv_freq.is_meta


def test_from_pretrained_on_a_directory(fixture_dir: Path) -> None:
    model = from_pretrained(str(fixture_dir))
    assert model.config.num_lower_layers == 1 and model.dtype == torch.float32
    assert float(model.speech_scaling_factor) == pytest.approx(1.7)


def test_missing_tensor_is_refused(tmp_path: Path, fixture_dir: Path) -> None:
    from safetensors.torch import load_file, save_file

    state = load_file(str(fixture_dir / "model.safetensors"))
    state.pop("model.acoustic_connector.fc2.weight")
    (tmp_path / "config.json").symlink_to(fixture_dir / "config.json")
    save_file(state, str(tmp_path / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(ValueError, match="lacks 1 tensors"):
        load_model(tmp_path)


def test_resolve_refuses_quickly_without_network(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    started = time.perf_counter()
    with pytest.raises(CheckpointNotFoundError, match="not in the local Hugging Face cache"):
        resolve_model_dir("microsoft/VibeVoice-Realtime-0.5B", cache_dir=str(tmp_path / "hf"))
    with pytest.raises(CheckpointNotFoundError, match="not a checkpoint directory"):
        resolve_model_dir(str(tmp_path))
    with pytest.raises(CheckpointNotFoundError, match="neither a directory nor a hub id"):
        resolve_model_dir(str(tmp_path / "no" / "such" / "dir"))
    assert time.perf_counter() - started < 5


def test_resolve_finds_a_cached_hub_snapshot(
    tmp_path: Path, fixture_dir: Path, monkeypatch
) -> None:
    """A hub id already in the HF cache resolves to its snapshot, offline."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    repo = tmp_path / "hf" / "models--microsoft--VibeVoice-Realtime-0.5B"
    commit = "0123456789abcdef0123456789abcdef01234567"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    link_model_dir(repo / "snapshots" / commit, None, with_preset=False)
    found = resolve_model_dir("microsoft/VibeVoice-Realtime-0.5B", cache_dir=str(tmp_path / "hf"))
    assert found == repo / "snapshots" / commit
