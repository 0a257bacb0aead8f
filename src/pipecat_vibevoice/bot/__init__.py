"""Serving the voice bot: FastAPI app, websocket sessions, browser client."""

from .app import ROUTER_FACTORIES, create_app
from .serializer import SafeProtobufSerializer
from .settings import ServerSettings, build_parser, settings_from_args

__all__ = [
    "ROUTER_FACTORIES",
    "SafeProtobufSerializer",
    "ServerSettings",
    "build_parser",
    "create_app",
    "settings_from_args",
]
