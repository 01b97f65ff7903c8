"""Settings from environment variables (pydantic-settings).

Every field reads the environment variable of the same name in upper case (``KAFKA_BROKER``,
``DATABASE_URL``, ...); the README lists them. Invalid values raise
``pydantic.ValidationError`` when the app is imported, before anything connects.
"""

from __future__ import annotations

from functools import lru_cache

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


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
    web_host: str = "127.0.0.1"
    web_port: int = Field(6066, ge=1, le=65535)
    #: Kafka SASL/SSL for real deployments: ``PLAINTEXT``, ``SSL``, ``SASL_PLAINTEXT``, ``SASL_SSL``.
    kafka_security_protocol: str = "PLAINTEXT"
    kafka_sasl_mechanism: str = "PLAIN"
    kafka_sasl_username: str | None = None
    kafka_sasl_password: str | None = None
    kafka_ssl_cafile: str | None = None

    # --- trading account (paper)
    account: str = "paper"
    initial_cash_usd: float = Field(100_000.0, gt=0)

    # --- trading agent
    #: OHLCV bar length in seconds; bars close on event time.
    bar_seconds: float = Field(60.0, gt=0)
    #: Closed bars kept per token for indicators (SMA(50) and MACD(12,26,9) need at least 50).
    bar_history: int = Field(120, ge=60, le=5000)
    #: Minimum rule score (0-100) for the trading agent to emit a BUY/SELL signal.
    signal_min_score: float = Field(40.0, ge=0, le=100)

    # --- consensus
    consensus_window_ms: int = Field(5000, gt=0)
    consensus_threshold: float = Field(70.0, ge=0, le=100)
    consensus_min_agents: int = Field(1, ge=1)
    #: Agent weights for the confidence-weighted score; agents not listed weigh 1.
    agent_weights: dict[str, float] = Field(default_factory=lambda: {"trading.rules": 1.0})

    # --- execution (paper exchange) and risk
    fee_bps: float = Field(4.5, ge=0, description="taker fee, basis points of notional")
    slippage_bps: float = Field(1.0, ge=0, description="adverse slippage, basis points of price")
    #: Target position notional as a fraction of equity (fixed-fraction sizing).
    position_fraction: float = Field(0.10, gt=0, le=10)
    min_order_notional_usd: float = Field(10.0, ge=0)
    max_leverage: float = Field(3.0, gt=0)

    # --- event-store sink
    sink_batch_size: int = Field(1000, ge=1)
    sink_batch_seconds: float = Field(0.25, gt=0)

    @field_validator("kafka_broker")
    @classmethod
    def _broker_scheme(cls, v: str) -> str:
        if "://" not in v:
            v = f"kafka://{v}"
        return v

    def topic(self, name: str) -> str:
        """Full topic name for a SPEC §3 topic name, with the configured prefix."""
        return f"{self.topic_prefix}{name}"


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()
