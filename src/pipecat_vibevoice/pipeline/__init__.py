"""The voice-bot pipeline: VAD → STT → LLM → TTS with fast barge-in.

Everything runs offline by default; see ``docs/bot.md``.
"""

from .builder import VoiceBot, build_voice_pipeline, default_tts_factory, make_llm
from .config import BotConfig, BotConfigError
from .models import SharedModels, bundled_whisper_path, load_shared_models
from .responder import OfflineResponder, reply_to
from .transcriber import Transcriber

__all__ = [
    "BotConfig",
    "BotConfigError",
    "OfflineResponder",
    "SharedModels",
    "Transcriber",
    "VoiceBot",
    "build_voice_pipeline",
    "bundled_whisper_path",
    "default_tts_factory",
    "load_shared_models",
    "make_llm",
    "reply_to",
]
