"""Order flow from the aggressor side of trades: volume delta, imbalance and how far it is from
chance. Pure functions over numbers, shared by the order-flow and whale agents.

Each trade is signed by its aggressor (the taker): a buy-initiated trade lifts the offer, a
sell-initiated one hits the bid. Over a set of trades with aggressor buy notional B and sell
notional S (USD):

* **volume delta** = B − S (USD); summed over all trades so far it is the *cumulative volume
  delta* (CVD) that order-flow charts plot;
* **imbalance** = (B − S) / (B + S), in −1 … 1: the order imbalance of Chordia & Subrahmanyam
  (2004, "Order imbalance and individual stock returns", J. Financial Economics 72) in volume
  terms, the per-bucket quantity |V_B − V_S| / (V_B + V_S) that VPIN averages (Easley, López de
  Prado & O'Hara 2012, "Flow toxicity and liquidity in a high-frequency world", Review of
  Financial Studies 25);
* **significance** of the imbalance: were each trade's side a fair coin flip independent of its
  size, the notional-weighted imbalance would have mean 0 and standard deviation
  √(Σv²) / Σv = 1 / √n_eff, with n_eff = (Σv)² / Σv² the effective number of trades. With
  z = imbalance × √n_eff, the significance is the two-sided normal level erf(|z| / √2) (0 when the
  flow could well be chance, near 1 when it could not): one large trade is weak evidence, a
  thousand trades leaning the same way strong.

Trades whose aggressor is unknown (candles, feeds that do not say) are left out rather than
guessed with the tick rule, which misclassifies a fifth or more of trades on fast markets (Ellis,
Michaely & O'Hara 2000, "The accuracy of trade classification rules", JFQA 35).
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(slots=True)
class Flow:
    """Aggressor flow of a set of trades: ``buy``/``sell`` notional (USD), ``sq`` Σ notional²
    (USD²) and ``trades`` (count)."""

    buy: float = 0.0
    sell: float = 0.0
    sq: float = 0.0
    trades: int = 0

    def add(self, side: str, notional: float) -> None:
        """One trade of ``notional`` USD (≥ 0) whose aggressor is ``side`` (``BUY``/``SELL``)."""
        if side == "BUY":
            self.buy += notional
        else:
            self.sell += notional
        self.sq += notional * notional
        self.trades += 1

    def merge(self, other: "Flow") -> None:
        self.buy += other.buy
        self.sell += other.sell
        self.sq += other.sq
        self.trades += other.trades

    @property
    def delta(self) -> float:
        """Volume delta B − S (USD)."""
        return self.buy - self.sell

    @property
    def total(self) -> float:
        return self.buy + self.sell

    def to_list(self) -> list:
        return [self.buy, self.sell, self.sq, self.trades]

    @classmethod
    def from_list(cls, v: list) -> "Flow":
        return cls(float(v[0]), float(v[1]), float(v[2]), int(v[3]))


def imbalance(flow: Flow) -> float:
    """(B − S) / (B + S) in −1 … 1; 0 for no volume."""
    total = flow.total
    return flow.delta / total if total > 0 else 0.0


def significance(flow: Flow) -> float:
    """erf(|imbalance| × √n_eff / √2) in 0 … 1, n_eff = (Σv)² / Σv² (see the module docstring);
    0 for no volume."""
    total = flow.total
    if total <= 0 or flow.sq <= 0:
        return 0.0
    z = abs(flow.delta) / math.sqrt(flow.sq)  # = |imbalance| × √n_eff
    return math.erf(z / math.sqrt(2.0))


@dataclass(frozen=True, slots=True)
class Vote:
    """An agent's view of a flow: ``action`` BUY/SELL, ``score`` 0-100, ``confidence`` 0-1."""

    action: str
    score: float
    confidence: float
    imbalance: float


def vote(flow: Flow, full_imbalance: float = 1.0, min_notional: float = 0.0) -> Vote | None:
    """The flow's vote: BUY when buyers were the aggressors on balance, SELL when sellers were;
    ``score`` = 100 × |imbalance| / ``full_imbalance`` capped at 100 (an imbalance of
    ``full_imbalance`` or more scores 100), ``confidence`` = :func:`significance`. ``None`` when
    the flow is below ``min_notional`` USD or exactly balanced.

    Raises ``ValueError`` for ``full_imbalance`` outside (0, 1]."""
    if not 0 < full_imbalance <= 1:
        raise ValueError(f"full_imbalance must be in (0, 1], got {full_imbalance}")
    if flow.total <= 0 or flow.total < min_notional:
        return None
    imb = imbalance(flow)
    if imb == 0:
        return None
    return Vote("BUY" if imb > 0 else "SELL", round(min(100.0, 100.0 * abs(imb) / full_imbalance), 4),
                round(significance(flow), 4), imb)
