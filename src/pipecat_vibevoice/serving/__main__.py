"""``python -m pipecat_vibevoice.serving``: the TTS-only server."""

import sys

from .app import main

sys.exit(main())
