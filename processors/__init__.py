"""Agents' logic as processors: one class per agent, with no Faust, Kafka or ``app`` import.

Each processor is built from a typed config (its part of the settings) and a state object whose
stores are injected: Faust tables in a worker (``app.runtime`` wires them, ``streams/`` runs them
as Faust agents), plain dicts in the in-process backtest engine (``backtest.engine``). A processor
answers an input event with the events it produces (``process(event, partition) -> list``);
what a runtime does with them (send to Kafka, route in process) is the runtime's business. Each
documents what it does when a partition it reads is revoked (``on_revoked``).

| processor | reads | writes (stores) | emits |
|---|---|---|---|
| trading.TradingProcessor | price.ticks | bars, indicators | signal.generated, price.minute |
| risk.RiskProcessor | price.ticks, liquidation.events | latest_prices | risk.*, trade.force_close |
| risk.HaltProcessor | risk.alerts | halt | - |
| consensus.ConsensusProcessor | signal.generated | windows | trade.consensus_approved, signal.consensus_failed |
| sentiment.SentimentProcessor | sentiment.updates | windows | signal.generated |
| correlation.CorrelationProcessor | sentiment.updates, price.minutes | windows, correlations | correlation.detected |
| execution.ExecutionProcessor | execution.requests, orders | execution_state | trade.placed/rejected/executed/outcome_unknown, risk.constraint_violation, risk.alert |
| portfolio.PortfolioProcessor | trade.executed | portfolio, exposures | position.closed, state.changed |
| llm.LLMAdvisor | (bar closes of the trading processor) | - | signal.generated, signal.error |
"""
