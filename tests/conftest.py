"""Test set-up shared by every layer.

Unit and agent tests import the app with the in-memory table store (``memory://``); integration
tests start real worker processes against the local Kafka broker and PostgreSQL (``make up``)
with their own settings, so this environment does not reach them.
"""

from __future__ import annotations

import gzip
import os
from pathlib import Path

import pytest

os.environ.setdefault("STORE_URL", "memory://")
os.environ.setdefault("BAR_SECONDS", "1")
# the agent tests trade an account "acct" beside the default "paper": halts and orders for an
# account the deployment does not know are refused
os.environ.setdefault("ACCOUNTS", '["acct"]')

ROOT = Path(__file__).resolve().parent.parent
SAMPLE = ROOT / "data" / "sample" / "binance_usdm_trades_20240808.csv.gz"
SHARED_DATA = ROOT.parent / "shared" / "data"


@pytest.fixture(scope="session")
def sample_path() -> Path:
    return SAMPLE


@pytest.fixture(scope="session")
def candles_path() -> Path:
    p = SHARED_DATA / "candles" / "ftx_btc_perp_1m_20211231_20220201.csv"
    if not p.exists():
        pytest.skip(f"{p} not present (../shared/data)")
    return p


def sample_lines(n: int) -> list[str]:
    with gzip.open(SAMPLE, "rt") as fh:
        return [next(fh) for _ in range(n + 1)]
