"""Pure domain logic: bars, indicators, signal rules, consensus scoring, paper fills, portfolio
accounting and risk math. No Faust or Kafka here, so backtests and unit tests reuse it as is."""
