"""How far float32 arithmetic may move a result: the tolerances of the VibeVoice tests.

A tolerance taken from the bits one CPU produced fails on the next CPU: another vector
unit (AVX-512, AVX2, plain C), another thread count or another BLAS blocking sums in
another order and rounds differently. So every numeric check of this package compares
against a **float64 reference** of our own implementation and allows what **float32
rounding** can do to that computation, estimated here by an error analysis that runs
with the test, on the same inputs:

1. ``float64_reference(model)`` is a copy of the model in float64, with the float32
   "islands" of the library code (the diffusion head's timestep sinusoid, the rotary
   embedding and the RMS norms, which transformers computes in float32 whatever the
   model's dtype) evaluated in float64 too. Its own rounding (unit roundoff 2^-53) is
   nine orders below what float32 does.
2. ``Float32Rounding`` runs that float64 model with, at the output of every operation,
   a random error of the size float32 rounding can make there (first-order, worst-case
   magnitudes per operation, random signs; the classical bounds of Higham, *Accuracy
   and Stability of Numerical Algorithms*, ch. 3):

   * a dot product of length n (``Linear``, ``Conv1d``, ``ConvTranspose1d``):
     ``|err| <= (n + 4) u (|W| |x| + |b|)``; the 4 covers the elementwise operations
     around it (residual adds, modulation, scaling), which round once each;
   * attention over T keys: ``(2T + 6) u max|a|`` on its output a (softmax sum and the
     weighted sum of values);
   * an RMS norm over H values: ``((H + 1)/2 + 3) u |y|``; any other elementwise module
     (activations): ``4 u |y|``;
   * a sinusoid cos/sin(a) of an argument a = t·f computed in float32 (f from ``exp``,
     one rounding; the product, another): ``(2|a| + 2) u``; this is the term that an
     AVX-512 machine's ``exp`` table hit (1 ULP of f at t = 999 moves a by 6e-5);
   * a DPM-Solver step (diffusers' float32 update, coefficients from exp/log):
     ``8 u |x|``.

   with u = 2^-24. Each run draws new signs; the largest deviation from the plain
   float64 result over a few runs, times a safety factor, is the **bound**.
3. A float32 result of ours and the official implementation's float32 goldens must each
   lie within that bound of the float64 reference, plus the final rounding of the
   result to float32 (2 u of its magnitude).

The bound scales with what the test computes: a component call gets 1e-5 to 1e-4 of
values near 1, a 30-latent generation through classifier-free guidance 1e-3 to 1e-2.
The observed float32 errors stay below a third of it on AVX-512, AVX2 and generic
kernels; small real mistakes exceed it (a guidance scale of 1.49 for 1.5, a decoder
input 0.1 % off, speech embeddings 0.05 % off each fail the generation checks).

Comparisons of two of *our* code paths that must agree exactly in exact arithmetic
(batched against per-utterance steps, streamed against whole text) run in float64, where
the same rounding is 2^29 times smaller: see :func:`float64_agreement`.
"""

from __future__ import annotations

import contextlib
import copy
import json
import math
import os
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import torch
from torch import nn

#: Unit roundoff of float32 and float64 (half an ULP at 1).
U32 = 2.0**-24
U64 = 2.0**-53
#: Runs of the rounding model per bound, and the factor over their largest deviation.
#: The model already takes the worst-case magnitude of every operation's error (a real
#: CPU's error is typically sqrt(n) u, not n u); the factor covers the few draws.
RUNS = 3
SAFETY = 2.0
#: How much the float64 paths of our code may amplify float64 rounding, relative to
#: its size. The float32 bounds show the amplification of this model's computations
#: (bound / (u · magnitude)) is below 1e4; 1e6 leaves two orders on top.
MAX_AMPLIFICATION = 1e6


# -- the float64 reference --------------------------------------------------------------------


def _exact_rotary_forward(rotary: nn.Module) -> Callable[..., tuple[torch.Tensor, torch.Tensor]]:
    """A float64 rotary embedding (transformers computes it in float32 on purpose)."""
    base = float(rotary.config.rope_parameters["rope_theta"])
    dim = rotary.inv_freq.numel() * 2
    inv_freq = 1.0 / base ** (torch.arange(0, dim, 2, dtype=torch.float64) / dim)
    scaling = float(rotary.attention_scaling)

    def forward(x: torch.Tensor, position_ids: torch.Tensor):
        freqs = position_ids[..., None].to(torch.float64) * inv_freq.to(x.device)
        emb = torch.cat((freqs, freqs), dim=-1)
        return (emb.cos() * scaling).to(x.dtype), (emb.sin() * scaling).to(x.dtype)

    return forward


def _exact_rms_norm_forward(norm: nn.Module) -> Callable[[torch.Tensor], torch.Tensor]:
    """The transformers RMS norms (Qwen2, VibeVoice, acoustic tokenizer), in the input's dtype."""

    def forward(x: torch.Tensor) -> torch.Tensor:
        variance = x.pow(2).mean(-1, keepdim=True)
        return norm.weight * (x * torch.rsqrt(variance + norm.variance_epsilon))

    return forward


def float64_reference(model: nn.Module) -> nn.Module:
    """A float64 copy of a ``VibeVoiceRealtimeModel`` with no float32 step left inside."""
    reference = copy.deepcopy(model).to(torch.float64)
    for module in reference.modules():
        if type(module).__name__.endswith("RMSNorm"):
            module.forward = _exact_rms_norm_forward(module)
    embedding = reference.prediction_head.timestep_embedding
    dim = embedding.freq.numel()
    period = float(embedding.config.diffusion_max_period)
    embedding.freq = torch.exp(-math.log(period) * torch.arange(dim, dtype=torch.float64) / dim)
    for lm in (reference.language_model, reference.tts_language_model):
        lm.rotary_emb.forward = _exact_rotary_forward(lm.rotary_emb)
    return reference


# -- the rounding model -----------------------------------------------------------------------


def _abs_linear(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``|W| |x| + |b|`` for the module's own operation."""
    bias = module.bias.abs() if module.bias is not None else None
    weight = module.weight.abs()
    if isinstance(module, nn.Linear):
        return nn.functional.linear(x.abs(), weight, bias)
    if isinstance(module, nn.ConvTranspose1d):
        return nn.functional.conv_transpose1d(
            x.abs(),
            weight,
            bias,
            module.stride,
            module.padding,
            module.output_padding,
            module.groups,
            module.dilation,
        )
    return nn.functional.conv1d(
        x.abs(), weight, bias, module.stride, module.padding, module.dilation, module.groups
    )


def _reduction_length(module: nn.Module) -> int:
    if isinstance(module, nn.Linear):
        return module.in_features
    kernel = module.kernel_size[0]
    if isinstance(module, nn.ConvTranspose1d):
        kernel = math.ceil(kernel / module.stride[0])
    return module.in_channels // module.groups * kernel


class Float32Rounding(contextlib.AbstractContextManager):
    """While active, every operation of a float64 model errs as much as float32 may.

    See the module docstring for the per-operation magnitudes. Signs are random
    (uniform in [-1, 1]) from a generator seeded with ``seed``.
    """

    def __init__(self, model: nn.Module, seed: int) -> None:
        self.model = model
        self.generator = torch.Generator().manual_seed(seed)
        self._handles: list[Any] = []
        self._patch = contextlib.ExitStack()

    def _noise(self, like: torch.Tensor) -> torch.Tensor:
        draw = torch.rand(like.shape, generator=self.generator, dtype=torch.float64)
        return (2 * draw - 1).to(like.device, like.dtype)

    def _perturb(self, y: torch.Tensor, magnitude: torch.Tensor) -> torch.Tensor:
        return y + self._noise(y) * magnitude

    def __enter__(self) -> Float32Rounding:
        from diffusers import DPMSolverMultistepScheduler

        for module in self.model.modules():
            self._hook(module)
        step = DPMSolverMultistepScheduler.step
        rounding = self

        def rounded_step(scheduler, *args, **kwargs):
            out = step(scheduler, *args, **kwargs)
            prev = out.prev_sample
            out.prev_sample = rounding._perturb(prev, 8 * U32 * prev.abs())
            return out

        self._patch.enter_context(
            _patched(DPMSolverMultistepScheduler, "step", rounded_step)
        )
        return self

    def __exit__(self, *exc: object) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        self._patch.close()

    def _hook(self, module: nn.Module) -> None:
        name = type(module).__name__
        if isinstance(module, nn.Linear | nn.Conv1d | nn.ConvTranspose1d):

            def reduction(mod, inputs, output):
                n = _reduction_length(mod)
                return self._perturb(output, (n + 4) * U32 * _abs_linear(mod, inputs[0]))

            self._handles.append(module.register_forward_hook(reduction))
        elif name.endswith("SinusoidalEmbedding"):

            def sinusoid(mod, inputs, output):
                arg = (inputs[0][:, None].to(torch.float64) * mod.freq[None]).abs()
                return self._perturb(output, (2 * torch.cat([arg, arg], -1) + 2) * U32)

            self._handles.append(module.register_forward_hook(sinusoid))
        elif name.endswith("RotaryEmbedding"):

            def rotary(mod, inputs, output):
                cos, sin = output
                positions = inputs[1][..., None].to(torch.float64).abs()
                arg = torch.cat([positions] * cos.shape[-1], -1)  # |a| <= position
                margin = (2 * arg + 2) * U32
                return self._perturb(cos, margin), self._perturb(sin, margin)

            self._handles.append(module.register_forward_hook(rotary))
        elif name.endswith("Attention") and hasattr(module, "o_proj"):
            self._hook_attention(module)
        elif "Norm" in name and not list(module.children()):

            def norm(mod, inputs, output):
                width = output.shape[-1]
                return self._perturb(output, ((width + 1) / 2 + 3) * U32 * output.abs())

            self._handles.append(module.register_forward_hook(norm))
        elif not list(module.children()) and not isinstance(
            module, nn.Embedding | nn.Identity | nn.Dropout
        ):

            def elementwise(mod, inputs, output):
                if not torch.is_tensor(output) or not output.is_floating_point():
                    return output
                return self._perturb(output, 4 * U32 * output.abs())

            self._handles.append(module.register_forward_hook(elementwise))

    def _hook_attention(self, attention: nn.Module) -> None:
        """Error of softmax and the weighted sum over the keys, on the attention's output."""
        keys: dict[str, int] = {}

        def count_keys(mod, args, kwargs):
            hidden = kwargs.get("hidden_states", args[0] if args else None)
            cache = kwargs.get("cache")
            past = int(cache.get_seq_length()) if cache is not None else 0
            keys["n"] = past + hidden.shape[1]

        def perturb_input(mod, args):
            (a,) = args
            width = 2 * keys.get("n", 64) + 6
            scale = a.abs().amax(dim=-1, keepdim=True)
            return (self._perturb(a, width * U32 * scale.expand_as(a)),)

        self._handles.append(attention.register_forward_pre_hook(count_keys, with_kwargs=True))
        self._handles.append(attention.o_proj.register_forward_pre_hook(perturb_input))


@contextlib.contextmanager
def _patched(owner: Any, name: str, value: Any) -> Iterator[None]:
    original = getattr(owner, name)
    setattr(owner, name, value)
    try:
        yield
    finally:
        setattr(owner, name, original)


# -- bounds and checks -------------------------------------------------------------------------


def _as_array(value: Any) -> np.ndarray:
    if torch.is_tensor(value):
        return value.detach().to(torch.float64).cpu().numpy()
    return np.asarray(value, dtype=np.float64)


def _row_max(deviation: np.ndarray) -> np.ndarray:
    """Largest deviation per row (last axis), broadcast back: one scale per vector."""
    if deviation.ndim == 0:
        return deviation
    return np.broadcast_to(deviation.max(axis=-1, keepdims=True), deviation.shape)


def rounding_bound(
    model64: nn.Module, compute: Callable[[], Any], runs: int = RUNS
) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Float64 results of ``compute()`` and how far float32 rounding may move each.

    ``compute`` runs on ``model64`` and returns a tensor or a tuple of them. Returns
    (references, bounds), one array each per returned value; a bound is per row (the
    last axis), times :data:`SAFETY`, plus the final float32 rounding of the value.
    """

    def run() -> list[np.ndarray]:
        out = compute()
        return [_as_array(v) for v in (out if isinstance(out, tuple | list) else (out,))]

    references = run()
    deviations = [np.zeros_like(r) for r in references]
    for seed in range(runs):
        with Float32Rounding(model64, seed):
            perturbed = run()
        for dev, ref, got in zip(deviations, references, perturbed, strict=True):
            np.maximum(dev, np.abs(got - ref), out=dev)
    bounds = [
        SAFETY * _row_max(dev) + 2 * U32 * np.abs(ref)
        for dev, ref in zip(deviations, references, strict=True)
    ]
    return references, bounds


#: When set, every check appends one JSON line here (bench/vibevoice_numerics.py reads it).
LOG_VARIABLE = "PIPECAT_VIBEVOICE_NUMERICS_LOG"


def assert_within(actual: Any, reference: np.ndarray, bound: np.ndarray, what: str) -> float:
    """Every element of ``actual`` within ``bound`` of ``reference``; returns the worst ratio."""
    got = _as_array(actual)
    assert got.shape == reference.shape, f"{what}: shape {got.shape} != {reference.shape}"
    deviation = np.abs(got - reference)
    ratio = deviation / bound
    worst = float(ratio.max()) if ratio.size else 0.0
    log = os.environ.get(LOG_VARIABLE)
    if log:
        with open(log, "a", encoding="utf-8") as out:
            record = {
                "check": what,
                "max_deviation": float(deviation.max()) if deviation.size else 0.0,
                "max_bound": float(bound.max()) if bound.size else 0.0,
                "worst_ratio": worst,
                "magnitude": float(np.abs(reference).max()) if reference.size else 0.0,
            }
            out.write(json.dumps(record) + "\n")
    if worst > 1.0:
        index = np.unravel_index(int(ratio.argmax()), ratio.shape)
        raise AssertionError(
            f"{what}: off by {abs(got[index] - reference[index]):.3g} at {index}, more than "
            f"float32 rounding allows there ({bound[index]:.3g}; worst ratio {worst:.2f})"
        )
    return worst


def float64_agreement(reference: Any) -> np.ndarray:
    """Tolerance for two float64 paths of our code that agree in exact arithmetic.

    They differ by float64 rounding, amplified at most :data:`MAX_AMPLIFICATION` times,
    plus, for values handed out in float32 (audio, EOS logits), that final rounding
    (one float32 rounding each, so 2 u). Elementwise, from the reference's magnitude.
    """
    magnitude = np.abs(_as_array(reference))
    scale = np.broadcast_to(magnitude.max(axis=-1, keepdims=True), magnitude.shape) if (
        magnitude.ndim
    ) else magnitude
    return MAX_AMPLIFICATION * U64 * (scale + 1.0) + 2 * U32 * magnitude


def assert_agree(got: Any, expected: Any, what: str = "values") -> float:
    """Two float64 paths of our code agree to float64 rounding (see :func:`float64_agreement`)."""
    reference = _as_array(expected)
    return assert_within(got, reference, float64_agreement(reference), what)
