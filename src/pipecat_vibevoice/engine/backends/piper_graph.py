"""Our variant of Piper's split VITS front half: it also outputs each phoneme's frames.

``streaming-vits`` splits a Piper voice at the latent that feeds the vocoder; the front
half computes how many frames each phoneme id lasts (the duration predictor's
``w_ceil = ceil(exp(logw) · mask · length_scale)``) but does not output it. Word
timestamps need it, so :func:`ensure_timed_frontend` keeps a copy of the front half
with that tensor as one more output, found by the graph's structure.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Any

from loguru import logger

#: Name of the per-phoneme frame counts in our variant of the front half.
DURATIONS_OUTPUT = "phoneme_frames"
#: File name of that variant, next to the split graphs: ``<voice>`` + this.
TIMED_FRONTEND_SUFFIX = ".frontend-durations.onnx"


def find_durations_tensor(model: Any) -> str:
    """The tensor of per-phoneme frame counts in a VITS front half, found by structure.

    VITS rounds the duration predictor's output up to whole frames (``Ceil``) and feeds
    the result to a ``CumSum`` (the monotonic expansion of phonemes to frames) and a
    ``ReduceSum`` (the frame count). Node names differ between exports, so the ``Ceil``
    is recognised by feeding a ``CumSum`` within a few element-wise steps; a graph with
    exactly one ``Ceil`` needs no further check.
    """
    graph = model.graph
    users: dict[str, list[Any]] = {}
    for node in graph.node:
        for name in node.input:
            users.setdefault(name, []).append(node)
    passthrough = {"Cast", "Identity", "Mul", "Squeeze", "Unsqueeze", "Reshape"}

    def reaches_cumsum(name: str, depth: int = 3) -> bool:
        for node in users.get(name, []):
            if node.op_type == "CumSum":
                return True
            if depth and node.op_type in passthrough:
                if any(reaches_cumsum(out, depth - 1) for out in node.output):
                    return True
        return False

    ceils = [node.output[0] for node in graph.node if node.op_type == "Ceil"]
    feeding = [name for name in ceils if reaches_cumsum(name)]
    if len(feeding) == 1:
        return feeding[0]
    if len(ceils) == 1:
        return ceils[0]
    raise ValueError(
        f"cannot tell the duration tensor of this VITS front half: Ceil outputs {ceils}"
    )


def ensure_timed_frontend(frontend: Path) -> Path:
    """The split front half with the per-phoneme frame counts as an extra output.

    Made once from ``frontend`` (``<voice>.frontend.onnx`` of ``streaming-vits``) and
    kept next to it as ``<voice>`` + :data:`TIMED_FRONTEND_SUFFIX`, rebuilt when the
    split graph is newer. The surgery only adds an ``Identity`` named
    :data:`DURATIONS_OUTPUT` on the duration tensor (:func:`find_durations_tensor`) and
    lists it as a graph output: every other node, and so the latent, is unchanged. The
    file is written under a temporary name and renamed, so concurrent loads never read
    half a file. ``streaming_vits.graph.seeded_frontend_session`` loads it like the
    plain front half (it only stamps seeds on the noise nodes).
    """
    import onnx

    name = frontend.name.removesuffix(".frontend.onnx").removesuffix(".onnx")
    target = frontend.with_name(name + TIMED_FRONTEND_SUFFIX)
    if target.is_file() and target.stat().st_mtime >= frontend.stat().st_mtime:
        return target
    model = onnx.load(str(frontend))
    if not any(o.name == DURATIONS_OUTPUT for o in model.graph.output):
        durations = find_durations_tensor(model)
        model.graph.node.append(
            onnx.helper.make_node("Identity", [durations], [DURATIONS_OUTPUT], name="durations")
        )
        model.graph.output.append(
            onnx.helper.make_tensor_value_info(DURATIONS_OUTPUT, onnx.TensorProto.FLOAT, None)
        )
    tmp = target.with_name(f"{name}.tmp{os.getpid()}.{threading.get_ident()}.onnx")
    try:
        onnx.save(model, str(tmp))
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)
    logger.info(f"Piper: front half with phoneme durations written to {target}")
    return target
