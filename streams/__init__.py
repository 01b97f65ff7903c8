"""The Faust runtime of the processors: one module per agent, each a thin Faust agent that decodes
its topic's messages, hands them to its processor (:mod:`app.runtime`) and sends what it answers.
Invalid messages go to the dead letters with the reason. Importing this package registers them."""

from streams import consensus, correlation, execution, portfolio, risk, sentiment, sink, ticks  # noqa: F401
