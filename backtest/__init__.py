"""Replay backtesting through the same agents (see :mod:`backtest.runner`)."""
