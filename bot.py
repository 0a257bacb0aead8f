#!/usr/bin/env python
"""Run the voice bot: ``python bot.py`` then open http://127.0.0.1:7860/.

Serves the browser client (``GET /``), one Pipecat pipeline per websocket
(``WS /ws``) and ``GET /health`` on one port. ``python bot.py --help`` lists every
flag; docs/bot.md explains them.
"""

from __future__ import annotations

import sys

from loguru import logger


def configure_logging(level: str) -> None:
    """Loguru to stderr with the session id of each line (``-`` outside sessions)."""
    logger.remove()
    logger.configure(extra={"session": "-"})
    logger.add(
        sys.stderr,
        level=level,
        format=(
            "<green>{time:HH:mm:ss.SSS}</green> | <level>{level: <7}</level> | "
            "<cyan>{extra[session]}</cyan> | {name}:{function}:{line} - {message}"
        ),
    )


def main(argv: list[str] | None = None) -> int:
    """Parse flags, build the app, serve until interrupted."""
    from pipecat_vibevoice.bot import build_parser, create_app, settings_from_args

    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        settings = settings_from_args(args)
    except ValueError as exc:
        parser.error(str(exc))
    configure_logging(settings.log_level)

    import uvicorn

    from pipecat_vibevoice.serving.app import UVICORN_SOCKET_OPTIONS

    app = create_app(settings)
    uvicorn.run(
        app, host=settings.host, port=settings.port, log_level="warning", **UVICORN_SOCKET_OPTIONS
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
