"""Official voice presets (``*.pt``) loaded without executing pickled code.

A preset is a pickled dict ``{lm, tts_lm, neg_lm, neg_tts_lm}`` of transformers-4.51
``BaseModelOutputWithPast`` objects holding a ``DynamicCache`` in its old layout
(``key_cache``/``value_cache`` lists). ``torch.load(weights_only=False)`` would run
whatever the pickle names, so we unpickle with an allow-list: torch's tensor rebuild
function, ``OrderedDict`` and the two (three, with the newer ``DynamicLayer`` layout)
transformers classes, which are *replaced* by inert record classes. Anything else — an
``os.system`` reduce, an unknown class — raises :class:`PresetError` before it is called.
The records are then converted to plain tensors and, per utterance, into the current
``DynamicCache``.
"""

from __future__ import annotations

import pickle
import types
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

BRANCHES = ("lm", "tts_lm", "neg_lm", "neg_tts_lm")


class PresetError(ValueError):
    """A voice preset is unreadable, malformed, or tries to run code."""


# -- inert stand-ins for the pickled transformers classes -----------------------------------


class _Record:
    """Accepts any construction and state; holds data, runs nothing."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.args = args
        self.kwargs = kwargs
        self.items: dict[str, Any] = {}

    def __setstate__(self, state: Any) -> None:
        if isinstance(state, tuple) and len(state) == 2:  # (dict, slots) form
            state = {**(state[0] or {}), **(state[1] or {})}
        if not isinstance(state, dict):
            raise PresetError(f"unexpected pickled state of type {type(state).__name__}")
        self.__dict__.setdefault("items", {})
        self.__dict__["state"] = state

    def __setitem__(self, key: str, value: Any) -> None:
        self.__dict__.setdefault("items", {})[key] = value


class _ModelOutputRecord(_Record):
    """Stands in for ``transformers.modeling_outputs.BaseModelOutputWithPast``."""

    FIELDS = ("last_hidden_state", "past_key_values", "hidden_states", "attentions")

    def field(self, name: str) -> Any:
        """A field, whichever way the pickle stored it (args, kwargs, items or state)."""
        if name in self.__dict__.get("items", {}):
            return self.items[name]
        if name in self.__dict__.get("kwargs", {}):
            return self.kwargs[name]
        state = self.__dict__.get("state") or {}
        if name in state:
            return state[name]
        args = self.__dict__.get("args", ())
        index = self.FIELDS.index(name)
        return args[index] if index < len(args) else None


class _CacheRecord(_Record):
    """Stands in for ``transformers.cache_utils.DynamicCache`` (old or new layout)."""


class _LayerRecord(_Record):
    """Stands in for ``transformers.cache_utils.DynamicLayer`` (transformers ≥ 4.56 layout)."""


_ALLOWED: dict[tuple[str, str], Any] = {
    ("collections", "OrderedDict"): __import__("collections").OrderedDict,
    ("torch._utils", "_rebuild_tensor_v2"): torch._utils._rebuild_tensor_v2,
    ("torch._utils", "_rebuild_tensor"): torch._utils._rebuild_tensor,
    ("torch", "Size"): torch.Size,
    ("transformers.modeling_outputs", "BaseModelOutputWithPast"): _ModelOutputRecord,
    ("transformers.cache_utils", "DynamicCache"): _CacheRecord,
    ("transformers.cache_utils", "DynamicLayer"): _LayerRecord,
}


class _RestrictedUnpickler(pickle.Unpickler):
    """Resolves only allow-listed globals; torch resolves storage types before us."""

    def find_class(self, module: str, name: str) -> Any:
        allowed = _ALLOWED.get((module, name))
        if allowed is None:
            raise PresetError(f"voice preset refers to {module}.{name}, which is not allowed")
        return allowed


#: Passed to ``torch.load`` as ``pickle_module``: torch wraps our ``Unpickler`` (adding
#: storage handling) and our ``find_class`` sees every other global.
_restricted_pickle = types.ModuleType("pipecat_vibevoice_restricted_pickle")
_restricted_pickle.Unpickler = _RestrictedUnpickler  # type: ignore[attr-defined]
_restricted_pickle.load = pickle.load  # type: ignore[attr-defined]
_restricted_pickle.__name__ = "pipecat_vibevoice_restricted_pickle"


# -- the converted preset -------------------------------------------------------------------


@dataclass
class PresetBranch:
    """One prefilled stream: the last hidden states and per-layer KV (after RoPE)."""

    last_hidden_state: torch.Tensor
    keys: list[torch.Tensor]
    values: list[torch.Tensor]

    @property
    def length(self) -> int:
        """Positions held in the cache."""
        return int(self.keys[0].shape[-2]) if self.keys else 0

    def to(self, device: Any, dtype: torch.dtype) -> PresetBranch:
        """Copy to a device/dtype."""
        return PresetBranch(
            self.last_hidden_state.to(device=device, dtype=dtype),
            [k.to(device=device, dtype=dtype) for k in self.keys],
            [v.to(device=device, dtype=dtype) for v in self.values],
        )

    def make_cache(self, lm_config):
        """A fresh current-layout ``DynamicCache`` holding this branch's KV.

        Each utterance gets its own cache (generation appends to it); the preset's
        tensors are never modified.
        """
        from transformers import DynamicCache

        cache = DynamicCache(config=lm_config)
        for layer, (k, v) in enumerate(zip(self.keys, self.values, strict=True)):
            cache.update(k, v, layer)
        return cache


@dataclass
class VoicePreset:
    """A voice: the four prefilled streams of the official format."""

    name: str
    lm: PresetBranch
    tts_lm: PresetBranch
    neg_lm: PresetBranch
    neg_tts_lm: PresetBranch

    def to(self, device: Any, dtype: torch.dtype) -> VoicePreset:
        """Copy every branch to a device/dtype."""
        return VoicePreset(self.name, *(getattr(self, b).to(device, dtype) for b in BRANCHES))

    def check_against(self, lower_layers: int, upper_layers: int, hidden: int) -> None:
        """Raise :class:`PresetError` when the preset does not fit the model."""
        wanted = {"lm": lower_layers, "neg_lm": lower_layers}
        wanted.update(tts_lm=upper_layers, neg_tts_lm=upper_layers)
        for branch, layers in wanted.items():
            got = getattr(self, branch)
            if len(got.keys) != layers:
                raise PresetError(
                    f"voice {self.name}: '{branch}' has {len(got.keys)} layers, "
                    f"the model has {layers}"
                )
            if got.last_hidden_state.shape[-1] != hidden:
                raise PresetError(
                    f"voice {self.name}: '{branch}' hidden size "
                    f"{got.last_hidden_state.shape[-1]} != model's {hidden}"
                )


def _tensor(value: Any, what: str) -> torch.Tensor:
    if not isinstance(value, torch.Tensor):
        raise PresetError(f"{what} is {type(value).__name__}, expected a tensor")
    return value.detach()


def _branch(record: Any, name: str) -> PresetBranch:
    if isinstance(record, _ModelOutputRecord):
        hidden = record.field("last_hidden_state")
        cache = record.field("past_key_values")
    elif isinstance(record, dict):
        hidden = record.get("last_hidden_state")
        cache = record.get("past_key_values")
    else:
        raise PresetError(f"preset entry '{name}' is {type(record).__name__}")
    hidden = _tensor(hidden, f"'{name}'.last_hidden_state")
    keys: list[torch.Tensor]
    values: list[torch.Tensor]
    if isinstance(cache, _CacheRecord):
        state = cache.__dict__.get("state") or {}
        if "key_cache" in state:  # transformers ≤ 4.55 layout
            keys, values = list(state["key_cache"]), list(state["value_cache"])
        elif "layers" in state:  # transformers ≥ 4.56 layout
            layers = state["layers"]
            keys = [(layer.__dict__.get("state") or {}).get("keys") for layer in layers]
            values = [(layer.__dict__.get("state") or {}).get("values") for layer in layers]
        else:
            raise PresetError(f"'{name}' cache has neither key_cache nor layers")
    elif isinstance(cache, list | tuple):  # legacy tuple-of-(k, v) format
        keys = [layer[0] for layer in cache]
        values = [layer[1] for layer in cache]
    else:
        raise PresetError(f"'{name}'.past_key_values is {type(cache).__name__}")
    keys = [_tensor(k, f"'{name}' key {i}") for i, k in enumerate(keys)]
    values = [_tensor(v, f"'{name}' value {i}") for i, v in enumerate(values)]
    for i, (k, v) in enumerate(zip(keys, values, strict=True)):
        if k.dim() != 4 or k.shape != v.shape or k.shape[-2] != hidden.shape[1]:
            raise PresetError(
                f"'{name}' layer {i}: key {tuple(k.shape)} / value {tuple(v.shape)} do not "
                f"match hidden states {tuple(hidden.shape)}"
            )
    return PresetBranch(hidden, keys, values)


def load_preset(path: str | Path) -> VoicePreset:
    """Load an official ``.pt`` preset safely; raises :class:`PresetError` on anything odd."""
    path = Path(path)
    try:
        raw = torch.load(
            str(path),
            map_location="cpu",
            pickle_module=_restricted_pickle,
            # weights_only=False is what lets torch use *our* allow-list unpickler
            # (torch's own weights-only one would reject the transformers classes).
            weights_only=False,
        )
    except PresetError as exc:
        raise PresetError(f"refusing voice preset {path}: {exc}") from None
    except Exception as exc:
        raise PresetError(f"cannot read voice preset {path}: {exc}") from exc
    if not isinstance(raw, dict) or not all(b in raw for b in BRANCHES):
        keys = sorted(raw) if isinstance(raw, dict) else type(raw).__name__
        raise PresetError(f"voice preset {path} lacks {BRANCHES} (has {keys})")
    return VoicePreset(path.stem, *(_branch(raw[b], b) for b in BRANCHES))


def find_presets(directories: list[Path]) -> dict[str, Path]:
    """Voice name (file stem) → preset path, searching each directory recursively.

    Earlier directories win on a name clash; names are sorted for a stable order.
    """
    found: dict[str, Path] = {}
    for directory in directories:
        if not directory or not Path(directory).is_dir():
            continue
        for file in sorted(Path(directory).rglob("*.pt")):
            found.setdefault(file.stem, file)
    return dict(sorted(found.items(), key=lambda kv: kv[0].lower()))
