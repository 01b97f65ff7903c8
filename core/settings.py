"""Settings from environment variables (pydantic-settings).

Every field reads the environment variable of the same name in upper case (``KAFKA_BROKER``,
``DATABASE_URL``, ...); the README lists them. Invalid values raise
``pydantic.ValidationError`` when the app is imported, before anything connects.
"""

from __future__ import annotations

from datetime import timedelta
from functools import lru_cache
from urllib.parse import urlparse

from typing import Annotated, Any, Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from domain.risk import DEFAULT_ASSETS, AssetSpec, Limits
from domain.signals import resolve
from domain.sizing import SizingRule


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_file=None, extra="ignore", case_sensitive=False)

    # --- infrastructure
    app_id: str = "moondev"
    kafka_broker: str = "kafka://127.0.0.1:9092"
    #: Prefix for every topic name (backtests and tests run beside live topics without touching them).
    topic_prefix: str = ""
    #: Faust table store: ``rocksdb://`` in production, ``memory://`` in unit tests.
    store_url: str = "rocksdb://"
    #: Folder for the worker's RocksDB tables (one per worker replica).
    data_dir: str = ".local/faust-data"
    database_url: str = "postgresql://postgres@127.0.0.1:55432/moondev"
    #: Host name other replicas reach this worker's web port at (table views are routed there):
    #: the pod's DNS name in Kubernetes, the service name in compose.
    web_host: str = "127.0.0.1"
    #: Address the web server listens on (WEB_HOST when unset); 0.0.0.0 in containers.
    web_bind: str | None = None
    web_port: int = Field(6066, ge=1, le=65535)
    #: Process id of the process that started this worker (a test run, a benchmark, a
    #: supervisor): once that process has ended (the worker's parent is no longer it), the worker
    #: stops as on SIGTERM, within about a second. Unset: the worker runs until it is stopped.
    exit_with_pid: int | None = Field(None, ge=1)
    #: Kafka SASL/SSL for real deployments: ``PLAINTEXT``, ``SSL``, ``SASL_PLAINTEXT``, ``SASL_SSL``.
    kafka_security_protocol: str = "PLAINTEXT"
    kafka_sasl_mechanism: str = "PLAIN"
    kafka_sasl_username: str | None = None
    kafka_sasl_password: str | None = None
    kafka_ssl_cafile: str | None = None
    #: A worker that sends no heartbeat for this long (s) is dropped from the group and its
    #: partitions (and their tables, from standby replicas) move to the others.
    kafka_session_timeout_seconds: float = Field(30.0, ge=6)
    kafka_heartbeat_interval_seconds: float = Field(3.0, gt=0)
    #: Longest time (ms) the broker holds a worker's fetch that finds no data while the worker
    #: still has records of another partition to take: bounds how long that partition, once
    #: taken, waits behind a fetch of idle ones (app.kafka.WaitByFetchFetcher); each such fetch is
    #: built and decoded in Python, so a busy worker makes about 1000 / this many a second.
    kafka_fetch_max_wait_ms: int = Field(10, ge=1, le=1500)
    #: The same (ms) when the fetch covers every partition: it is answered as soon as any gets a
    #: record, so this only sets how often an idle worker asks (about 1000 / this many empty
    #: fetches a second; an idle worker used 31 % of a core at 10 ms, 3 % at 500).
    kafka_idle_fetch_max_wait_ms: int = Field(500, ge=1, le=1500)
    #: Shortest time (ms) between two fetches that leave such a partition out: while a worker
    #: works through a backlog, its other partitions are asked for at most this often (0: back to
    #: back, aiokafka's own).
    kafka_partial_fetch_interval_ms: int = Field(50, ge=0, le=1000)
    #: Replicas of every topic the app creates (the catalogue, table changelogs, Faust's own): 3 on
    #: a three-broker cluster, so a broker can be lost without losing a partition.
    topic_replication_factor: int = Field(1, ge=1)
    #: Replicas that must have a write before the broker acknowledges it (producers send with
    #: acks=all): 2 of 3 keeps writing with one broker down and loses nothing acknowledged.
    topic_min_insync_replicas: int = Field(1, ge=1)
    #: Retention (hours) of catalogue topics, over the catalogue's defaults (JSON, e.g.
    #: {"price.ticks": 48, "trade.executed": 720}). Topics one agent reads together (orders and
    #: execution.requests; sentiment.updates and price.minutes) get the longer of their two.
    topic_retention_hours: dict[str, Annotated[float, Field(gt=0)]] = Field(default_factory=dict)

    #: Log lines: ``json`` (one object per line with the handled event's ids: core.logs) or
    #: ``text`` (Faust's own format).
    log_format: Literal["json", "text"] = "json"

    # --- event time
    #: Events stamped more than this far ahead of the wall clock (s), or before the floor (ms
    #: since the epoch; Bitcoin's first block by default), are dead-lettered by every consumer
    #: and never stored: they would freeze bars and marks, or make the store create partitions.
    event_max_ahead_seconds: float = Field(300.0, gt=0)
    event_time_floor_ms: int = Field(1_230_940_800_000, ge=0)

    # --- trading account (paper)
    account: str = "paper"
    #: Other accounts this deployment trades besides ACCOUNT. Halts, resumes and close-alls name
    #: one of these (the control endpoints answer 400 for any other), and the halt agent
    #: dead-letters a risk event for an unknown account instead of letting it halt trading.
    accounts: list[str] = Field(default_factory=list)
    initial_cash_usd: float = Field(100_000.0, gt=0)

    # --- trading agent
    #: OHLCV bar length in seconds; bars close on event time.
    bar_seconds: float = Field(60.0, gt=0)
    #: Rule set of the trading agent, a name from :data:`domain.signals.RULE_SETS`: ``default``
    #: (trend, cross, momentum, RSI, Bollinger) or ``sma_cross`` (SMA crossovers only).
    trading_rules: str = "default"
    #: The rule set's parameters (JSON, e.g. {"fast": 10, "slow": 30}); defaults for those not given.
    trading_params: dict[str, Any] = Field(default_factory=dict)
    #: Minimum score (0-100) for the trading, order-flow and whale agents to emit a BUY/SELL signal.
    signal_min_score: float = Field(40.0, ge=0, le=100)

    # --- order-flow and whale agents (trades with a known aggressor side)
    #: Closed bars (BAR_SECONDS each) whose aggressor flow the order-flow agent votes on.
    orderflow_window_bars: int = Field(5, ge=1, le=1000)
    #: Buy/sell imbalance (B - S) / (B + S) that scores 100; smaller ones score proportionally.
    orderflow_full_imbalance: float = Field(0.5, gt=0, le=1)
    #: Trade notional (USD) from which a trade is a whale's, per token, with a ``default``
    #: (JSON, e.g. {"default": 100000, "BTC": 250000}).
    whale_notional_usd: dict[str, Annotated[float, Field(gt=0)]] = Field(
        default_factory=lambda: {"default": 100_000.0})
    #: Event-time window (seconds) of the net whale flow the whale agent votes on.
    whale_window_seconds: float = Field(300.0, gt=0)

    # --- consensus
    consensus_window_ms: int = Field(5000, gt=0)
    consensus_threshold: float = Field(70.0, ge=0, le=100)
    consensus_min_agents: int = Field(2, ge=1)
    #: The decision's confidence (the confidence-weighted mean of its signals' confidences) must
    #: reach this too (0-1).
    consensus_min_confidence: float = Field(0.5, ge=0, le=1)
    #: Signals of other tokens on the same partition may arrive this late (event time) before a
    #: window is closed by the partition's stream time.
    consensus_grace_ms: int = Field(1000, ge=0)
    #: Agent weights for the confidence-weighted score; agents not listed weigh 1.
    agent_weights: dict[str, float] = Field(
        default_factory=lambda: {"trading.rules": 1.0, "trading.llm": 1.0, "sentiment": 0.8, "orderflow": 1.0,
                                 "whale": 1.0})

    # --- LLM advice (off without ANTHROPIC_API_KEY)
    anthropic_api_key: SecretStr | None = None
    anthropic_base_url: str | None = None
    llm_model: str = "claude-sonnet-4-5"
    #: Seconds before an LLM answer counts as late (the request is abandoned, signal.error emitted).
    llm_timeout_seconds: float = Field(10.0, gt=0)
    #: Requests in flight at once, and requests waiting (one per token; the oldest is dropped).
    llm_concurrency: int = Field(4, ge=1, le=64)
    llm_queue_size: int = Field(32, ge=1)
    llm_max_tokens: int = Field(400, ge=64)

    # --- sentiment agent
    #: 5-minute follower-weighted bullish share (%) at or above which (or at or below 100 minus
    #: which) the agent signals, if the velocity (5-min share minus 1-h share, percentage points)
    #: agrees by at least SENTIMENT_VELOCITY_PP.
    sentiment_bullish_pct: float = Field(60.0, gt=50, le=100)
    sentiment_velocity_pp: float = Field(5.0, ge=0)
    #: Updates in the 5-minute window for full confidence.
    sentiment_min_updates: int = Field(20, ge=1)

    # --- sentiment-price correlation
    correlation_threshold: float = Field(0.7, gt=0, lt=1)
    #: Aligned 1-minute points needed before r counts.
    correlation_min_points: int = Field(20, ge=3, le=60)
    #: Confidence multiplier (1 + this × |r|) for trading signals in the correlated direction.
    correlation_confidence_boost: float = Field(0.25, ge=0)

    # --- execution and risk
    #: Exchange adapter: ``paper`` (default) or ``hyperliquid`` (needs HYPERLIQUID_SECRET_KEY).
    exchange: Literal["paper", "hyperliquid"] = "paper"
    fee_bps: float = Field(4.5, ge=0, description="taker fee, basis points of notional")
    slippage_bps: float = Field(1.0, ge=0, description="adverse slippage at the touch, basis points")
    #: Paper book: liquidity per level (USD), price step between levels (bps), levels before an
    #: IOC remainder is cancelled, and a simulated answer latency (ms).
    paper_level_notional_usd: float = Field(250_000.0, gt=0)
    paper_level_step_bps: float = Field(1.0, ge=0)
    paper_max_levels: int = Field(20, ge=1)
    paper_latency_ms: float = Field(0.0, ge=0)
    hyperliquid_base_url: str = "https://api.hyperliquid.xyz"
    hyperliquid_secret_key: SecretStr | None = None
    hyperliquid_account_address: str | None = None
    #: Target position notional as a fraction of equity (the default strategy's fixed fraction).
    position_fraction: float = Field(0.10, gt=0, le=10)
    #: Sizing per strategy (JSON): {"name": {"method": "fixed"|"kelly", "fraction", "payoff_ratio",
    #: "kelly_multiplier", "kelly_cap", "boost_confidence", "boost_multiplier"}}; a decision's
    #: ``strategy`` picks one, ``default`` otherwise (built from POSITION_FRACTION when absent).
    sizing: dict[str, SizingRule] = Field(default_factory=dict)
    min_order_notional_usd: float = Field(10.0, ge=0)
    max_leverage: float = Field(3.0, gt=0)
    #: Leverage orders are opened at (initial margin = notional / min(this, asset max leverage)).
    order_leverage: float = Field(10.0, gt=0)
    max_position_notional_usd: float = Field(50_000.0, gt=0)
    daily_loss_limit_pct: float = Field(5.0, gt=0, le=100)
    #: Exchange metadata per token (JSON {"BTC": {"max_leverage": 40, "sz_decimals": 5}, ...}).
    assets: dict[str, AssetSpec] = Field(default_factory=lambda: dict(DEFAULT_ASSETS))
    #: Price move (% against the reference price) that raises a risk.alert while exposed.
    price_alert_pct: float = Field(5.0, gt=0)
    #: Liquidation cascades: daily volatility and fallback daily volume for the square-root impact
    #: estimate, and the estimated loss (% of equity) above which risk.cascade_detected is emitted.
    cascade_daily_vol: float = Field(0.03, gt=0)
    cascade_default_daily_volume_usd: float = Field(1e9, gt=0)
    cascade_alert_pct_equity: float = Field(0.5, gt=0)

    # --- Discord notifier (off without a webhook URL; the URL is a secret and never logged)
    discord_webhook_url: SecretStr | None = None
    #: WARNING alerts are batched for at most this long (CRITICAL ones are sent at once).
    discord_batch_seconds: float = Field(2.0, gt=0, le=5)

    # --- live market data (faust -A app ingest EXCHANGE)
    #: Exchange symbol -> token, checked before the built-in rule (BTCUSDT, BTC-USD, BTC -> BTC).
    ingest_token_map: dict[str, str] = Field(default_factory=dict)
    #: WebSocket base URLs; unset means the exchange's public endpoint.
    binance_ws_url: str | None = None
    coinbase_ws_url: str | None = None
    hyperliquid_ws_url: str | None = None
    #: HyperLiquid addresses whose liquidation fills become liquidation.event.
    hyperliquid_ingest_users: list[str] = Field(default_factory=list)
    #: No frame for this long (s) → reconnect; reconnect backoff cap (s); frames buffered for a slow broker.
    ingest_stale_seconds: float = Field(10.0, gt=0)
    ingest_backoff_cap_seconds: float = Field(30.0, gt=0)
    ingest_queue_size: int = Field(10_000, ge=1)

    # --- event store (daily partitions, or a TimescaleDB hypertable: store.eventstore)
    #: TimescaleDB only: compress chunks older than this; drop chunks older than the retention (0 = never).
    store_compress_after_days: int = Field(7, ge=1)
    store_retention_days: int = Field(0, ge=0)
    #: Store every event in PostgreSQL (backtests turn it off: their events stay in their topics).
    store_events: bool = True

    #: ``/events/``: a page holds at most this many bytes of event JSON (and at most ``limit`` rows).
    events_page_max_bytes: int = Field(1_048_576, ge=4096)

    # --- event-store sink
    sink_batch_size: int = Field(1000, ge=1)
    sink_batch_seconds: float = Field(0.25, gt=0)
    #: A sink batch waiting longer than this (s), or a sink silent this long, makes /health/ 503.
    sink_stuck_seconds: float = Field(60.0, gt=0)
    #: CPU priority of the sink process below the worker's (``nice`` increment, 0-19).
    sink_nice: int = Field(10, ge=0, le=19)

    #: The portfolio agent sends a ``state.snapshot`` of an account (what ``faust -A app rebuild``
    #: restores it from) at its first fill after this many seconds of event time since the last.
    snapshot_seconds: float = Field(300.0, gt=0)

    # --- agent health
    #: A worker whose health checks (those of /health/) do not all pass this many seconds after
    #: it started sends ``system.startup_failure`` naming the failing ones (once).
    startup_timeout_seconds: float = Field(180.0, gt=0)
    #: Messages an agent's input partition may be behind its high watermark before the worker
    #: sends ``agent.lagging`` (checked every second, at most once a minute per partition).
    agent_lag_threshold: int = Field(10_000, ge=1)
    #: A message whose handling takes this long (ms) makes the worker send ``agent.lagging``
    #: (reason processing_time; at most once a minute per agent).
    agent_slow_ms: float = Field(1000.0, gt=0)

    # --- web: access control, dashboard, SLA
    #: Bearer token for the control endpoints (halt, resume, close-all); its holder is audited as
    #: ``operator``. CONTROL_TOKENS (JSON {"name": "token"}) names several holders. Without any
    #: token the control endpoints refuse every request (401).
    control_token: SecretStr | None = None
    control_tokens: dict[str, SecretStr] = Field(default_factory=dict)
    #: Require the bearer token on the read views too (health probes and the dashboard page's
    #: static assets stay open; the dashboard then asks for the token).
    read_auth: bool = False
    #: The event-store views (``/events/``, ``/trace/``) hand out every stored event, so they need
    #: the bearer token even without READ_AUTH; EVENTS_AUTH=false opens them (a local run).
    events_auth: bool = True
    #: Control requests per client (token holder, or address when unauthenticated) per minute.
    control_rate_per_minute: int = Field(10, ge=1)
    #: Proxies (addresses or CIDR networks, e.g. the ingress's) whose ``X-Forwarded-For`` names the
    #: client for the control rate limit and audit; without any, the peer address is the client.
    trusted_proxies: list[str] = Field(default_factory=list)
    #: Dashboard: the hub on/off (backtest workers run without it), WebSocket clients per worker, recent events kept per list, and the bytes a slow
    #: client may have queued before it is disconnected.
    dashboard_enabled: bool = True
    dashboard_max_clients: int = Field(2000, ge=1)
    dashboard_history: int = Field(100, ge=1, le=10_000)
    dashboard_client_buffer_bytes: int = Field(1_048_576, ge=65_536)
    #: Origins (``https://ops.example.com``) whose pages may open the dashboard WebSocket besides
    #: the worker's own (a request whose Origin names the host it was sent to); clients that send
    #: no Origin (not browsers) are let in.
    dashboard_allowed_origins: list[str] = Field(default_factory=list)
    #: SLA latency limits (ms), checked on every observation; a breach counts in
    #: moondev_sla_violations_total and emits metric.sla_violation (at most one per metric per
    #: SLA_EVENT_INTERVAL_SECONDS, carrying the number of breaches it stands for).
    sla_limits_ms: dict[str, float] = Field(default_factory=lambda: {
        "tick_to_publish": 15.0, "tick_to_risk_alert": 50.0, "risk_evaluation": 5.0,
        "signal_to_order": 200.0, "state_to_dashboard": 50.0, "event_store_insert": 10.0})
    sla_event_interval_seconds: float = Field(10.0, gt=0)

    @field_validator("kafka_broker")
    @classmethod
    def _broker_scheme(cls, v: str) -> str:
        if "://" not in v:
            v = f"kafka://{v}"
        return v

    @model_validator(mode="after")
    def _exchange_keys(self) -> "Settings":
        resolve(self.trading_rules, self.trading_params)  # ParamError (a ValueError) names the problem
        if self.exchange == "hyperliquid" and self.hyperliquid_secret_key is None:
            raise ValueError("EXCHANGE=hyperliquid needs HYPERLIQUID_SECRET_KEY")
        self.sizing.setdefault("default", SizingRule(fraction=self.position_fraction))
        return self

    @model_validator(mode="after")
    def _topic_settings(self) -> "Settings":
        from models.topics import TOPIC_SPECS

        if self.topic_min_insync_replicas > self.topic_replication_factor:
            raise ValueError(f"TOPIC_MIN_INSYNC_REPLICAS {self.topic_min_insync_replicas} exceeds "
                             f"TOPIC_REPLICATION_FACTOR {self.topic_replication_factor}: no write could succeed")
        unknown = sorted(set(self.topic_retention_hours) - set(TOPIC_SPECS))
        if unknown:
            raise ValueError(f"TOPIC_RETENTION_HOURS names topics not in the catalogue: {', '.join(unknown)}")
        return self

    def topic_retention(self, name: str) -> timedelta:
        """Retention of a catalogue topic: TOPIC_RETENTION_HOURS, else the catalogue's."""
        from models.topics import TOPIC_SPECS

        hours = self.topic_retention_hours.get(name)
        return timedelta(hours=hours) if hours is not None else TOPIC_SPECS[name].retention

    def topic_configs(self) -> dict[str, str]:
        """Broker configs every created topic carries besides partitions and retention."""
        return {"min.insync.replicas": str(self.topic_min_insync_replicas)}

    @field_validator("trusted_proxies")
    @classmethod
    def _proxy_networks(cls, v: list[str]) -> list[str]:
        import ipaddress
        for net in v:
            try:
                ipaddress.ip_network(net, strict=False)
            except ValueError as exc:
                raise ValueError(f"TRUSTED_PROXIES: {net!r} is not an address or CIDR network") from exc
        return v

    def trusted_proxy_networks(self) -> list:
        """TRUSTED_PROXIES as ``ipaddress`` networks."""
        import ipaddress
        return [ipaddress.ip_network(n, strict=False) for n in self.trusted_proxies]

    def known_accounts(self) -> frozenset[str]:
        """ACCOUNT and ACCOUNTS."""
        return frozenset((self.account, *self.accounts))

    def control_holders(self) -> dict[str, str]:
        """Token holder name -> token (secret values)."""
        out = {k: v.get_secret_value() for k, v in self.control_tokens.items()}
        if self.control_token is not None:
            out.setdefault("operator", self.control_token.get_secret_value())
        return {k: v for k, v in out.items() if v}

    def secrets(self) -> list[str]:
        """Every configured secret value, for log redaction."""
        values = [*self.control_holders().values(), self.kafka_sasl_password or ""]
        for s in (self.anthropic_api_key, self.hyperliquid_secret_key, self.discord_webhook_url):
            if s is not None:
                values.append(s.get_secret_value())
        if self.discord_webhook_url is not None:  # the webhook's token is its last path part
            values.append(self.discord_webhook_url.get_secret_value().rstrip("/").rsplit("/", 1)[-1])
        values.append(urlparse(self.database_url).password or "")
        return sorted({v for v in values if len(v) >= 4}, key=len, reverse=True)

    @property
    def limits(self) -> Limits:
        return Limits(self.max_leverage, self.order_leverage, self.max_position_notional_usd,
                      self.daily_loss_limit_pct, self.min_order_notional_usd)

    @property
    def bootstrap_servers(self) -> list[str]:
        """``host:port`` of each broker in KAFKA_BROKER (``kafka://b1:9092;kafka://b2:9092``)."""
        return bootstrap_servers(self.kafka_broker)

    def aiokafka_connection(self) -> dict:
        """Arguments for a plain aiokafka client with these brokers and SASL/SSL settings."""
        import ssl

        proto = self.kafka_security_protocol.upper()
        out: dict = {"bootstrap_servers": self.bootstrap_servers, "security_protocol": proto}
        if "SSL" in proto:
            out["ssl_context"] = ssl.create_default_context(cafile=self.kafka_ssl_cafile)
        if proto.startswith("SASL"):
            out.update(sasl_mechanism=self.kafka_sasl_mechanism, sasl_plain_username=self.kafka_sasl_username,
                       sasl_plain_password=self.kafka_sasl_password)
        return out

    def topic(self, name: str) -> str:
        """Full topic name for a catalogue topic name (models.topics), with the configured prefix."""
        return f"{self.topic_prefix}{name}"


def bootstrap_servers(kafka_broker: str) -> list[str]:
    """``host:port`` of each broker in a Faust broker URL (``kafka://b1:9092;kafka://b2:9092``)."""
    return [u.split("://", 1)[-1] for u in kafka_broker.replace(";", ",").split(",") if u]


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()
