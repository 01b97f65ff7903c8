"""Faust tables: the agents' state, each backed by a changelog topic (RocksDB in production).

Values are JSON (dicts); keys are the token or account as ``str``, serialized raw, so a key's
bytes (and its partition) are those of the topic key that feeds the table. Keys are typed ``str``
rather than ``bytes`` so that keys recovered from a changelog equal the keys agents write (the
``memory://`` store keeps keys unserialized).

| table | key | partitions | written by | value |
|---|---|---|---|---|
| bar_history | token | 10 | trading | {"last_start": ms, "ind": running indicator state (domain.indicators)} |
| indicators | token | 10 | trading | last bar's indicator values and signal |
| orderflow | token | 10 | orderflow | last closed bar, aggressor flow of the window's bars, cumulative volume delta |
| whales | token | 10 | whale | last closed bar, whale trades of the window |
| consensus_windows | token | 5 | consensus | the open 5 s window and the closed-until watermark |
| sentiment_windows | token | 3 | sentiment | 1-minute buckets of the last hour (domain.sentiment) |
| correlation_windows | token | 3 | correlation | aligned points and running sums (domain.correlation) |
| correlations (global) | token | 3 | correlation | latest r, points, implied action, for the trading agent |
| portfolio | account | 5 | portfolio | domain.portfolio state |
| execution_state | account | 5 | execution | in-flight and recently submitted client order ids |
| latest_prices (global) | token | 10 | risk | {"price", "ts"} last tick per token |
| exposures (global) | account | 5 | portfolio | {"cash", "positions", "day_start_equity"} for marking to market |
| halt (global) | account | 3 | halt (from risk.alerts) | {"halted", "reason", "since_ms", "event_id"} |
"""

from app.main import app, settings

# str keys, serialized raw by the app's table classes (app.main.RawKeyTable): they hash like the
# topic keys, so table routing matches the topics. Values JSON.
_json = dict(key_type=str, extra_topic_configs=settings.topic_configs())
# Every worker gets all of a global table's changelog partitions as actives (faust-streaming's
# assignor), so another worker's writes reach it through the recovery path, which applies events
# in batches of recovery_buffer_size (default 1,000): with two replicas a worker saw the other's
# prices, halt flags and exposures only every 1,000 writes. Global tables are small (compacted,
# one key per token or account) and read live by every worker: apply each event as it arrives.
_global = dict(key_type=str, recovery_buffer_size=1, extra_topic_configs=settings.topic_configs())

bar_history = app.Table("bar_history", partitions=10, help="last closed bar and running indicator state per token", **_json)
indicators = app.Table("indicators", partitions=10, help="last indicators and signal per token", **_json)
orderflow = app.Table("orderflow", partitions=10, help="aggressor flow of the last bars per token", **_json)
whales = app.Table("whales", partitions=10, help="whale trades of the last window per token", **_json)
consensus_windows = app.Table("consensus_windows", partitions=5, help="open consensus windows per token", **_json)
portfolio = app.Table("portfolio", partitions=5, help="portfolio per account", **_json)
execution_state = app.Table("execution_state", partitions=5, help="execution engine state per account", **_json)
sentiment_windows = app.Table("sentiment_windows", partitions=3, help="sentiment buckets per token", **_json)
correlation_windows = app.Table("correlation_windows", partitions=3, help="correlation window per token", **_json)
correlations = app.GlobalTable("correlations", partitions=3, help="latest sentiment-price correlation", **_global)
latest_prices = app.GlobalTable("latest_prices", partitions=10, help="last price per token", **_global)
exposures = app.GlobalTable("exposures", partitions=5, help="positions per account, for risk", **_global)
halt = app.GlobalTable("halt", partitions=3, help="trading-halt flag per account", **_global)
