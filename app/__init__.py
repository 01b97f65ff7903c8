"""The Faust application package: ``faust -A app worker`` finds the app here.

Importing it registers every agent (``streams``), table (``tables``), web view and command.
"""

from app.main import app  # noqa: F401  (the faust.App)

import streams  # noqa: E402,F401  (registers the agents)
from app import commands, web  # noqa: E402,F401

__all__ = ["app"]
