"""One settings rule for every app: environment, then flags; names never collide."""

from __future__ import annotations

import pytest

from pipecat_vibevoice.bot.settings import ServerSettings, build_parser, settings_from_args
from pipecat_vibevoice.engine import TTSConfig
from pipecat_vibevoice.pipeline import BotConfig, BotConfigError
from pipecat_vibevoice.serving import ServingSettings
from pipecat_vibevoice.serving.app import TTSServerSettings
from pipecat_vibevoice.settings_base import SettingsError

BOT_PROCESS = (ServerSettings, BotConfig, TTSConfig, ServingSettings)
TTS_PROCESS = (TTSServerSettings, ServingSettings, TTSConfig)


@pytest.mark.parametrize("classes", [BOT_PROCESS, TTS_PROCESS])
def test_no_two_settings_share_a_variable_or_a_flag(classes) -> None:
    variables, flags = {}, {}
    for cls in classes:
        for f, _ in cls._fields():
            for table, key in ((variables, cls.env_name(f.name)), (flags, cls.flag_name(f.name))):
                assert key not in table, f"{key}: {table.get(key)} and {cls.__name__}"
                table[key] = cls.__name__


def test_every_layer_of_the_bot_reads_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    env = {
        "PIPECAT_VIBEVOICE_PORT": "7999",
        "PIPECAT_VIBEVOICE_LLM_URL": "http://127.0.0.1:9/v1",
        "PIPECAT_VIBEVOICE_VOICE": "2",
        "PIPECAT_VIBEVOICE_VAD_STOP_SECS": "0.3",
        "PIPECAT_VIBEVOICE_ENGINE": "piper",
        "PIPECAT_VIBEVOICE_SERVING_MAX_QUEUE": "7",
        "PIPECAT_VIBEVOICE_SERVING_TOKEN": "",  # empty = unset, everywhere
    }
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    args = build_parser().parse_args(["--vad-stop-secs", "0.4", "--tts-max-queue", "9"])
    settings = settings_from_args(args)
    assert settings.port == 7999
    assert settings.bot.llm_url == "http://127.0.0.1:9/v1" and settings.bot.voice == 2
    assert settings.bot.vad_stop_secs == 0.4  # the flag wins over the environment
    assert settings.tts.engine == "piper"
    assert settings.serving.max_queue == 9 and settings.serving.token == ""


def test_bad_values_name_the_variable_or_the_field() -> None:
    with pytest.raises(BotConfigError, match="PIPECAT_VIBEVOICE_STT_THREADS"):
        BotConfig.from_env({"PIPECAT_VIBEVOICE_STT_THREADS": "many"})
    with pytest.raises(SettingsError, match="PIPECAT_VIBEVOICE_PIPELINE"):
        ServerSettings.from_env({"PIPECAT_VIBEVOICE_PIPELINE": "other"})
    with pytest.raises(SettingsError, match="max_queue"):
        ServingSettings.from_env({"PIPECAT_VIBEVOICE_SERVING_MAX_QUEUE": "-1"})
    with pytest.raises(SystemExit):
        build_parser().parse_args(["--engine", "nope"])


def test_secrets_stay_off_the_command_line() -> None:
    flags = {a.option_strings[0] for a in build_parser()._actions if a.option_strings}
    assert "--llm-api-key" not in flags
    assert "--llm-url" in flags and "--tts-token" in flags
