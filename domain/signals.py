"""Rule sets: trading signals from indicator values, registered once with their parameters.

A rule set is a function ``(indicators, params) -> RuleSignal`` registered with
:func:`rule_set` under a name, with a pydantic model of its parameters (names, defaults, bounds)
and the indicators it needs (:class:`domain.indicators.IndicatorSpec`, from the parameters).
Adding one is this one edit: settings (``TRADING_RULES``, ``TRADING_PARAMS``), the backtest CLI
(``--rules``, ``--param``, ``--sweep``) and the Python API read the registry.

``default``: each rule votes +1 (BUY), -1 (SELL) or 0 with a weight; rules whose indicators are
not yet available do not vote and lower the confidence.

- trend (``w_trend``): SMA(fast) above / below SMA(slow);
- cross (``w_cross``): SMA(fast) crossed SMA(slow) on this bar (golden / death cross);
- momentum (``w_momentum``): MACD histogram above / below zero;
- RSI (``w_rsi``): RSI below ``rsi_oversold`` (BUY) / above ``rsi_overbought`` (SELL);
- Bollinger (``w_bollinger``): close below the lower band (BUY) / above the upper band (SELL).

``score`` = 100 × |Σ vote × weight| / Σ weight of the rules that took a side (a neutral rule
neither supports nor opposes), ``action`` its sign (HOLD at 0); ``confidence`` = Σ weight of the
rules with enough data to vote / Σ all weights, so a signal formed before every indicator is warm
carries less weight in the consensus.

``sma_cross``: the textbook SMA(fast)/SMA(slow) crossover: BUY (score 100) on the bar SMA(fast)
crosses above SMA(slow), SELL on the bar it crosses below, HOLD otherwise; confidence 1. For
backtests that must match other tools' SMA-cross strategies.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from domain.indicators import IndicatorSpec


@dataclass(slots=True)
class RuleSignal:
    action: str  # BUY | SELL | HOLD
    score: float  # 0-100
    confidence: float  # 0-1
    reasons: list[str] = field(default_factory=list)


class RuleParams(BaseModel):
    """Base of every rule set's parameters: unknown names are refused, values are validated."""

    model_config = ConfigDict(extra="forbid", frozen=True)


@dataclass(frozen=True, slots=True)
class RuleSet:
    name: str
    params: type[RuleParams]
    evaluate: Callable[[Mapping[str, float | None], Any], RuleSignal]
    indicators: Callable[[Any], IndicatorSpec]
    doc: str
    #: Optional ``(series, params) -> bool array``: the bars of a whole series
    #: (:func:`domain.indicators.series`) on which ``evaluate`` may answer BUY or SELL. A runtime
    #: holding the whole input evaluates only those bars; every other bar is HOLD. Must never
    #: leave out a bar ``evaluate`` would signal on (tested against it).
    may_signal: Callable[[Mapping[str, Any], Any], Any] | None = None


#: name -> registered rule set
RULE_SETS: dict[str, RuleSet] = {}


def rule_set(name: str, params: type[RuleParams], indicators: Callable[[Any], IndicatorSpec],
             may_signal: Callable[[Mapping[str, Any], Any], Any] | None = None):
    """Register the decorated ``evaluate(values, params) -> RuleSignal`` as rule set ``name``
    (``may_signal``: see :class:`RuleSet`)."""

    def register(fn):
        RULE_SETS[name] = RuleSet(name, params, fn, indicators, (fn.__doc__ or "").strip(), may_signal)
        return fn

    return register


class ParamError(ValueError):
    """Unknown rule set, unknown parameter or invalid value; the message is one line."""


def resolve(name: str, params: Mapping[str, Any] | None = None) -> tuple[RuleSet, RuleParams]:
    """The rule set ``name`` and its validated parameters (defaults for those not given).

    Raises:
        ParamError: unknown rule set, unknown parameter, or a value out of bounds.
    """
    rs = RULE_SETS.get(name)
    if rs is None:
        raise ParamError(f"unknown rule set {name!r}; one of {', '.join(sorted(RULE_SETS))}")
    try:
        return rs, rs.params.model_validate(dict(params or {}))
    except ValidationError as exc:
        err = exc.errors(include_url=False)[0]
        where = ".".join(map(str, err["loc"])) or "params"  # empty for a model-level check
        msg = err["msg"].removeprefix("Value error, ")
        raise ParamError(f"rule set {name!r}: {msg}" if where == "params" else
                         f"rule set {name!r}: {where}: {msg}") from None


def describe(name: str) -> dict[str, dict]:
    """Parameter name -> {"default", "type", "bounds"} of a rule set, for help and reports."""
    out = {}
    for pname, f in RULE_SETS[name].params.model_fields.items():
        bounds = {type(m).__name__.lower(): getattr(m, type(m).__name__.lower(), None) for m in f.metadata}
        out[pname] = {"default": f.default, "type": getattr(f.annotation, "__name__", str(f.annotation)),
                      "bounds": {k: v for k, v in bounds.items() if v is not None}}
    return out


# ------------------------------------------------------------------ default
class DefaultParams(RuleParams):
    fast: int = Field(20, ge=2, le=1000, description="fast SMA period (bars)")
    slow: int = Field(50, ge=3, le=1000, description="slow SMA period (bars)")
    ema_length: int = Field(20, ge=2, le=1000)
    rsi_length: int = Field(14, ge=2, le=1000)
    rsi_oversold: float = Field(30.0, ge=0, le=100)
    rsi_overbought: float = Field(70.0, ge=0, le=100)
    macd_fast: int = Field(12, ge=2, le=1000)
    macd_slow: int = Field(26, ge=3, le=1000)
    macd_signal: int = Field(9, ge=2, le=1000)
    bb_length: int = Field(20, ge=2, le=1000)
    bb_std: float = Field(2.0, gt=0, le=10)
    w_trend: float = Field(30.0, ge=0)
    w_cross: float = Field(20.0, ge=0)
    w_momentum: float = Field(20.0, ge=0)
    w_rsi: float = Field(15.0, ge=0)
    w_bollinger: float = Field(15.0, ge=0)

    @model_validator(mode="after")
    def _ordered(self) -> "DefaultParams":
        if self.fast >= self.slow:
            raise ValueError(f"fast ({self.fast}) must be below slow ({self.slow})")
        if self.macd_fast >= self.macd_slow:
            raise ValueError(f"macd_fast ({self.macd_fast}) must be below macd_slow ({self.macd_slow})")
        if self.rsi_oversold >= self.rsi_overbought:
            raise ValueError("rsi_oversold must be below rsi_overbought")
        if self.w_trend + self.w_cross + self.w_momentum + self.w_rsi + self.w_bollinger <= 0:
            raise ValueError("at least one rule weight must be positive")
        return self


def _default_spec(p: DefaultParams) -> IndicatorSpec:
    return IndicatorSpec(sma=(p.fast, p.slow), ema=p.ema_length, rsi=p.rsi_length,
                         macd=(p.macd_fast, p.macd_slow, p.macd_signal), bb=(p.bb_length, p.bb_std))


@rule_set("default", DefaultParams, _default_spec)
def evaluate(ind: Mapping[str, float | None], p: DefaultParams = DefaultParams()) -> RuleSignal:
    """Trend, cross, momentum, RSI and Bollinger rules, weighted."""
    weights = {"trend": p.w_trend, "cross": p.w_cross, "momentum": p.w_momentum, "rsi": p.w_rsi,
               "bollinger": p.w_bollinger}
    votes: dict[str, int] = {}
    reasons: list[str] = []
    fast, slow = f"sma_{p.fast}", f"sma_{p.slow}"
    s20, s50 = ind.get(fast), ind.get(slow)
    if s20 is not None and s50 is not None:
        votes["trend"] = 1 if s20 > s50 else -1 if s20 < s50 else 0
        reasons.append(f"SMA{p.fast} {'>' if s20 > s50 else '<' if s20 < s50 else '='} SMA{p.slow}")
        p20, p50 = ind.get(f"{fast}_prev"), ind.get(f"{slow}_prev")
        if p20 is not None and p50 is not None:
            if p20 <= p50 and s20 > s50:
                votes["cross"] = 1
                reasons.append(f"golden cross SMA{p.fast}/SMA{p.slow}")
            elif p20 >= p50 and s20 < s50:
                votes["cross"] = -1
                reasons.append(f"death cross SMA{p.fast}/SMA{p.slow}")
            else:
                votes["cross"] = 0
    hist = ind.get("macd_hist")
    if hist is not None:
        votes["momentum"] = 1 if hist > 0 else -1 if hist < 0 else 0
        reasons.append(f"MACD histogram {hist:+.4g}")
    rsi = ind.get(f"rsi_{p.rsi_length}")
    if rsi is not None:
        votes["rsi"] = 1 if rsi < p.rsi_oversold else -1 if rsi > p.rsi_overbought else 0
        if votes["rsi"]:
            reasons.append(f"RSI{p.rsi_length} {rsi:.1f} {'oversold' if rsi < p.rsi_oversold else 'overbought'}")
    close, lo, up = ind.get("close"), ind.get("bb_lower"), ind.get("bb_upper")
    if close is not None and lo is not None and up is not None:
        votes["bollinger"] = 1 if close < lo else -1 if close > up else 0
        if votes["bollinger"]:
            reasons.append("close below lower Bollinger band" if close < lo else "close above upper Bollinger band")
    total = sum(weights.values())
    informed = sum(weights[k] for k in votes)
    if informed == 0:
        return RuleSignal("HOLD", 0.0, 0.0, ["not enough bars"])
    sided = sum(weights[k] for k, v in votes.items() if v)
    net = sum(weights[k] * v for k, v in votes.items())
    score = round(100.0 * abs(net) / sided, 2) if sided else 0.0
    action = "BUY" if net > 0 else "SELL" if net < 0 else "HOLD"
    return RuleSignal(action, score, round(informed / total, 4), reasons)


# ------------------------------------------------------------------ sma_cross
class SmaCrossParams(RuleParams):
    fast: int = Field(20, ge=1, le=5000, description="fast SMA period (bars)")
    slow: int = Field(50, ge=2, le=5000, description="slow SMA period (bars)")

    @model_validator(mode="after")
    def _ordered(self) -> "SmaCrossParams":
        if self.fast >= self.slow:
            raise ValueError(f"fast ({self.fast}) must be below slow ({self.slow})")
        return self


def _sma_crosses(v: Mapping[str, Any], p: SmaCrossParams):
    f, s = f"sma_{p.fast}", f"sma_{p.slow}"
    s20, s50, p20, p50 = v[f], v[s], v[f"{f}_prev"], v[f"{s}_prev"]
    return ((p20 < p50) & (s20 > s50)) | ((p20 > p50) & (s20 < s50))  # NaN compares false: HOLD


@rule_set("sma_cross", SmaCrossParams,
          lambda p: IndicatorSpec(sma=(p.fast, p.slow), ema=None, rsi=None, macd=None, bb=None), _sma_crosses)
def sma_cross(ind: Mapping[str, float | None], p: SmaCrossParams = SmaCrossParams()) -> RuleSignal:
    """SMA(fast)/SMA(slow) crossover: BUY on a golden cross, SELL on a death cross."""
    f, s = f"sma_{p.fast}", f"sma_{p.slow}"
    s20, s50, p20, p50 = ind.get(f), ind.get(s), ind.get(f"{f}_prev"), ind.get(f"{s}_prev")
    if s20 is None or s50 is None or p20 is None or p50 is None:
        return RuleSignal("HOLD", 0.0, 0.0, ["not enough bars"])
    if p20 < p50 and s20 > s50:
        return RuleSignal("BUY", 100.0, 1.0, [f"golden cross SMA{p.fast}/SMA{p.slow}"])
    if p20 > p50 and s20 < s50:
        return RuleSignal("SELL", 100.0, 1.0, [f"death cross SMA{p.fast}/SMA{p.slow}"])
    return RuleSignal("HOLD", 0.0, 1.0, [])
