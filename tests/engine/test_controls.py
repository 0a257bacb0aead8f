"""One range per control, and every door that takes a control agrees with it."""

from __future__ import annotations

import json

import pytest

from pipecat_vibevoice.engine import TTSConfig
from pipecat_vibevoice.engine.config import ConfigError
from pipecat_vibevoice.engine.controls import CONTROLS, ControlError, check_control
from pipecat_vibevoice.serving.protocol import ProtocolError, parse_message

#: Values around every bound, plus wrong types.
PROBES = [0, 0.05, 0.1, 0.49, 0.5, 1, 1.5, 2, 2.0, 2.01, 2.5, 5.0, 10, 10.5, 50, 51, 100, 101,
          -1, float("nan"), float("inf"), True, "1", None]  # fmt: skip


def accepted(fn) -> bool:
    try:
        fn()
    except (ValueError, TypeError):
        return False
    return True


@pytest.mark.parametrize("name", sorted(CONTROLS))
def test_the_protocol_accepts_exactly_what_the_control_accepts(name: str) -> None:
    for value in PROBES:
        if value is None or isinstance(value, float) and value != value:
            continue  # absent / not JSON
        expected = accepted(lambda v=value: check_control(name, v))
        message = json.dumps({"type": "speak", "text": "Hi.", name: value})
        assert accepted(lambda m=message: parse_message(m, 1000)) == expected, (name, value)


@pytest.mark.parametrize("name", ["cfg_scale", "inference_steps"])
def test_the_config_accepts_exactly_what_the_control_accepts(name: str) -> None:
    for value in PROBES:
        if value is None:
            continue
        expected = accepted(lambda v=value: check_control(name, v))
        got = accepted(lambda v=value: TTSConfig(engine="piper", **{name: v}))
        assert got == expected, (name, value)


def test_refusals_say_which_kind() -> None:
    with pytest.raises(ControlError, match="integer") as exc:
        check_control("inference_steps", 2.5)  # never truncated to 2
    assert exc.value.kind == "type"
    with pytest.raises(ControlError, match="above the maximum of 2.0") as exc:
        check_control("speed", 3)
    assert exc.value.kind == "range"
    with pytest.raises(ControlError, match="must be above 0.0"):
        check_control("cfg_scale", 0)
    assert check_control("inference_steps", 5.0) == 5 and isinstance(
        check_control("inference_steps", 5.0), int
    )


def test_protocol_reason_codes_follow_the_kind() -> None:
    def reason(field: str, value) -> str:
        with pytest.raises(ProtocolError) as exc:
            parse_message(json.dumps({"type": "speak", "text": "Hi.", field: value}), 1000)
        return exc.value.reason

    assert reason("speed", "fast") == "invalid_message"
    assert reason("speed", 9) == "invalid_value"
    assert reason("inference_steps", 2.5) == "invalid_message"
    assert reason("inference_steps", 101) == "invalid_value"


def test_config_errors_name_the_field() -> None:
    with pytest.raises(ConfigError, match="cfg_scale"):
        TTSConfig(cfg_scale=11)
