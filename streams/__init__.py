"""Agents (Faust stream processors), one module per agent. Importing this package registers them."""

from streams import consensus, execution, notifier, portfolio, risk, sink, trading  # noqa: F401
