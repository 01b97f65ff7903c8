"""Agents (Faust stream processors), one module per agent. Importing this package registers them."""

from streams import consensus, correlation, execution, notifier, portfolio, risk, sentiment, sink, trading  # noqa: F401
