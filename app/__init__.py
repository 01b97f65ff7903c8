"""The Faust application package: ``faust -A app worker`` finds the app here.

Importing it builds the ``faust.App`` only; Faust's autodiscovery (``app.main``) registers the
agents (``streams``), tables, web views and commands when a ``faust -A app`` command starts.
"""

from app.main import app  # noqa: F401  (the faust.App)

__all__ = ["app"]
