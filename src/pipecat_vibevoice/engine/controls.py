"""Every synthesis control's range and check, defined once.

Speed, pitch, the VibeVoice knobs and the seed reach the engine from five doors: the
engine's own arguments, :class:`~pipecat_vibevoice.engine.TTSConfig` (env and CLI), the
Pipecat service's runtime settings, the ``/v1/tts/stream`` protocol and the VibeVoice
backend's per-call options. All of them call :func:`check_control`, so a value one door
accepts is never refused by the next, and every refusal reads the same.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal


class ControlError(ValueError):
    """A control value is refused; the message names the control and its range.

    ``kind`` is ``"type"`` for a value that is not a number (or not an integer where one
    is needed) and ``"range"`` for a number outside the range, so protocols can answer
    with distinct reason codes.
    """

    def __init__(self, message: str, kind: Literal["type", "range"]) -> None:
        super().__init__(message)
        self.kind = kind


@dataclass(frozen=True)
class Control:
    """One numeric control: its range (``low`` may be excluded) and whether it is an integer."""

    name: str
    low: float
    high: float
    default: float | None
    integer: bool = False
    low_exclusive: bool = False
    help: str = ""

    @property
    def range_text(self) -> str:
        """The range as people write it: ``0.5..2.0``, ``(0, 10]``."""
        if self.low_exclusive:
            return f"({self.low:g}, {self.high:g}]"
        if self.integer:
            return f"{int(self.low)}..{int(self.high)}"
        return f"{self.low}..{self.high}"

    def check(self, value: Any) -> float | int:
        """The canonical value (float, or int for integer controls), or :class:`ControlError`.

        An integer control accepts a float only when it is integral (``5.0``): a client
        sending ``2.5`` steps has a bug, and truncating it would hide that.
        """
        if (
            isinstance(value, bool)
            or not isinstance(value, int | float)
            or not math.isfinite(value)
        ):
            raise ControlError(
                f"{self.name} must be a number within {self.range_text}, got {value!r}", "type"
            )
        if self.integer:
            if isinstance(value, float) and not value.is_integer():
                raise ControlError(
                    f"{self.name} must be an integer within {self.range_text}, got {value!r}",
                    "type",
                )
            value = int(value)
        if self.low_exclusive and value <= self.low:
            raise ControlError(f"{self.name}={value} must be above {self.low}", "range")
        if value < self.low:
            raise ControlError(f"{self.name}={value} is below the minimum of {self.low}", "range")
        if value > self.high:
            raise ControlError(f"{self.name}={value} is above the maximum of {self.high}", "range")
        return value if self.integer else float(value)


SPEED = Control("speed", 0.5, 2.0, 1.0, help="speaking rate (1.0 = natural)")
PITCH = Control("pitch", 0.5, 2.0, 1.0, help="pitch factor (1.0 = natural)")
CFG_SCALE = Control(
    "cfg_scale", 0.0, 10.0, 1.5, low_exclusive=True, help="VibeVoice classifier-free guidance"
)
INFERENCE_STEPS = Control(
    "inference_steps", 1, 100, 5, integer=True, help="VibeVoice diffusion steps per latent"
)
SEED = Control("seed", 0, 2**31 - 1, None, integer=True, help="same seed, same audio")

#: The fastest speed a model's native duration control is asked for; the rest is a DSP
#: time-stretch. Piper's duration predictor loses DNSMOS OVRL past it (3.22 at 1.25,
#: 3.05 at 1.5, 2.96 at 2.0 natively; native to 1.25 then WSOLA: see the README table).
NATIVE_SPEED_MAX = 1.25


def split_speed(speed: float, native: bool) -> tuple[float, float]:
    """How a speed is made: ``(model speed, DSP stretch)``, whose product is ``speed``.

    A backend with a native speed control (``SpeechBackend.native_speed``) takes all of
    a slower speed and up to :data:`NATIVE_SPEED_MAX` of a faster one; the engine's
    time-stretch does the rest. Without one, the stretch does everything. The backend
    and the engine's audio stages both ask here, so the two halves always agree.
    """
    if not native:
        return 1.0, speed
    model = min(speed, NATIVE_SPEED_MAX)
    return model, speed / model


#: Every control by name.
CONTROLS: dict[str, Control] = {c.name: c for c in (SPEED, PITCH, CFG_SCALE, INFERENCE_STEPS, SEED)}
#: Controls only the VibeVoice backend reads (Piper ignores them).
VIBEVOICE_CONTROLS = (CFG_SCALE.name, INFERENCE_STEPS.name)


def check_control(name: str, value: Any) -> float | int:
    """Check ``value`` against the control ``name`` (see :meth:`Control.check`)."""
    return CONTROLS[name].check(value)
