"""File feed parsing and the command line: bad arguments get one line and a non-zero exit."""

from __future__ import annotations

import gzip
import subprocess
import sys
from pathlib import Path

import pytest

from app.commands import parse_speed
from feeds.files import FeedError, RollingVolume, normalise_token, read_ticks, schedule

ROOT = Path(__file__).resolve().parents[2]
FAUST = str(Path(sys.executable).parent / "faust")


@pytest.mark.parametrize("symbol, token", [("BTCUSDT", "BTC"), ("BTC-USD", "BTC"), ("BTCUSD_PERP", "BTC"),
                                           ("eth", "ETH"), ("SOL-PERP", "SOL"), ("BTC", "BTC"),
                                           ("BTCUSD_200925", "BTC")])
def test_normalise_token(symbol, token):
    assert normalise_token(symbol) == token


def test_candles_need_a_token_and_give_one_tick_per_candle(candles_path):
    with pytest.raises(FeedError, match="--token"):
        read_ticks(candles_path)
    rows = read_ticks(candles_path, token="BTC", limit=3)
    assert [r.price for r in rows] == [46377.0, 46411.0, rows[2].price]
    assert rows[0].ts_ms == 1640991660000 + 60_000  # 2021-12-31 23:01 UTC candle closes a minute later


def test_unknown_header_and_missing_file(tmp_path):
    p = tmp_path / "x.csv.gz"
    with gzip.open(p, "wt") as fh:
        fh.write("a,b\n1,2\n")
    with pytest.raises(FeedError, match="unrecognised header"):
        read_ticks(p)
    with pytest.raises(FeedError, match="no such file"):
        read_ticks(tmp_path / "missing.csv")


def test_rolling_volume_and_schedule():
    v = RollingVolume(60_000)
    assert v.add("BTC", 0, 10) == 10
    assert v.add("BTC", 30_000, 5) == 15
    assert v.add("BTC", 60_000, 1) == 6
    rows = read_ticks(ROOT / "data/sample/binance_usdm_trades_20240808.csv.gz", limit=200)
    dues = [d for d, _ in schedule(rows, 10.0)]
    span = (rows[-1].ts_ms - rows[0].ts_ms) / 1000 / 10
    assert dues[0] == 0 and dues[-1] == pytest.approx(span, abs=1e-6)
    assert all(d == 0 for d, _ in schedule(rows, None))


def test_parse_speed():
    assert parse_speed("max") is None and parse_speed("2.5") == 2.5
    for bad in ("0", "-1", "fast", "inf"):
        with pytest.raises(SystemExit):
            parse_speed(bad)


@pytest.mark.parametrize("args, needle", [
    (["feed", "/nonexistent/file.csv"], "no such file"),
    (["feed", "data/sample/binance_usdm_trades_20240808.csv.gz", "--speed", "warp"], "--speed"),
    (["feed"], "Missing argument"),
    (["feed", "x", "--bogus"], "No such option"),
    (["sentiment-feed", "/nonexistent/tweets.tsv"], "no such file"),
    (["sentiment-feed", "README.md", "--rate", "0"], "--rate must be"),
    (["sentiment-feed", "README.md", "--start-ms", "yesterday"], "--start-ms"),
    (["ingest", "kraken"], "unknown exchange 'kraken'"),
    (["ingest", "binance", "--max-seconds", "-1"], "--max-seconds"),
    (["ingest", "binance", "--trade-stream", "bookTicker"], "--trade-stream"),
])
def test_bad_cli_arguments_get_one_line_and_exit_2(args, needle):
    proc = subprocess.run([FAUST, "-A", "app", *args], cwd=ROOT, capture_output=True, text=True, timeout=120,
                          env={**__import__("os").environ, "STORE_URL": "memory://"})
    assert proc.returncode == 2, proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and needle in lines[0], proc.stderr
    assert "Traceback" not in proc.stderr


def test_help_lists_the_custom_commands():
    proc = subprocess.run([FAUST, "-A", "app", "--help"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0
    for command in ("feed", "migrate", "sentiment-feed", "ingest"):
        assert f"  {command} " in proc.stdout, command


def test_fed_ticks_have_ids_from_their_source(tmp_path):
    """A row's event id derives from its source, so two reads (two feeds) give the same ids:
    a Binance trade from (stream kind, symbol, trade id), as the live adapter derives it; a
    candle from its token and close time; a row without a trade id from its content and rank."""
    import json

    from feeds.exchanges import Binance
    from models.events import derived_id

    sample = ROOT / "data/sample/binance_usdm_trades_20240808.csv.gz"
    first, again = read_ticks(sample), read_ticks(sample)
    ids = [r.event_id for r in first]
    assert ids == [r.event_id for r in again]
    assert len(set(ids)) == len(ids)
    assert first[0].key[:3] == ("binance", "trade", first[0].key[2]) and isinstance(first[0].key[3], int)
    # the id the live adapter gives the same trade
    live = Binance(["BTCUSDT"]).parse(json.dumps({"stream": "btcusdt@trade", "data": {
        "e": "trade", "s": "BTCUSDT", "t": first[0].key[3], "p": "61800.30", "q": "0.006", "T": first[0].ts_ms}}),
        received_ms=first[0].ts_ms)
    assert first[0].key[2] == "BTCUSDT" and live[0].event_id == first[0].event_id

    no_ids = tmp_path / "trades.csv"
    no_ids.write_text("symbol,trade_time_ms,price,qty\nBTCUSDT,1000,10,1\nBTCUSDT,1000,10,1\nBTCUSDT,999,11,1\n")
    rows = read_ticks(no_ids)
    assert len({r.event_id for r in rows}) == 3, "identical rows are told apart by their rank"
    assert [r.event_id for r in rows] == [r.event_id for r in read_ticks(no_ids)]


def test_fed_candles_have_ids_from_token_and_close_time(candles_path):
    from models.events import derived_id

    candles = read_ticks(candles_path, token="BTC", limit=5)
    assert [r.event_id for r in candles] == [derived_id("candle", "BTC", r.ts_ms) for r in candles]


def test_trade_files_give_the_aggressor_side_and_trade_id(tmp_path):
    """``is_buyer_maker`` true means a seller hit a resting buy: aggressor SELL. The bundled sample
    has both sides; a file without the column gives no side; a value that is neither is a
    ``FeedError`` naming its line."""
    import csv
    import gzip

    sample = ROOT / "data/sample/binance_usdm_trades_20240808.csv.gz"
    with gzip.open(sample, "rt") as fh:
        first = next(csv.DictReader(fh))
    rows = read_ticks(sample)
    by_trade = {r.trade_id: r for r in rows}
    assert by_trade[first["trade_id"]].side == ("SELL" if first["is_buyer_maker"] == "True" else "BUY")
    assert {r.side for r in rows} == {"BUY", "SELL"}
    plain = tmp_path / "plain.csv"
    plain.write_text("symbol,trade_time_ms,price,qty\nBTCUSDT,1000,10,1\n")
    assert read_ticks(plain)[0].side is None
    bad = tmp_path / "bad.csv"
    bad.write_text("symbol,trade_time_ms,price,qty,is_buyer_maker\nBTCUSDT,1000,10,1,maybe\n")
    with pytest.raises(FeedError, match="line 2.*is_buyer_maker"):
        read_ticks(bad)


def test_encoded_ticks_are_the_events_json_with_ingest_ms_spliced_in():
    """What the feed sends is byte for byte what ``encode_event`` gives the tick stamped when it
    is sent, with the rolling volume over the rows in order; a trade id that holds the
    placeholder's text does not move the splice (a quote in a JSON string is escaped)."""
    from feeds.files import TickRow, encode_ticks
    from models.events import PriceTick, decode_event, encode_event

    rows = read_ticks(ROOT / "data/sample/binance_usdm_trades_20240808.csv.gz", limit=500)
    rows.append(TickRow(rows[-1].ts_ms, "BTC", 61_000.0, 0.5, 30_500.0, ("row", 1), "BUY", 'x"ingest_ms":0'))
    vol = RollingVolume()
    for i, (row, enc) in enumerate(zip(rows, encode_ticks(rows, "feed.file:sample"), strict=True)):
        ms = 1_723_161_256_322 + i
        want = PriceTick(event_id=row.event_id, timestamp=row.ts_ms, token=row.token, source="feed.file:sample",
                         price=row.price, size=row.size, side=row.side, trade_id=row.trade_id,
                         volume_1m=vol.add(row.token, row.ts_ms, row.quote_volume), ingest_ms=ms)
        assert enc.key == row.token.encode()
        assert enc.value(ms) == encode_event(want)
        assert decode_event(enc.value(ms)) == want


def test_a_row_that_is_not_a_valid_tick_fails_the_feed_in_one_line_before_anything_is_sent(tmp_path):
    """The ticks are validated before the first is sent (and before the broker is reached: this
    runs with none), so a bad row stops the feed with one line naming it, not a traceback halfway."""
    from feeds.files import encode_ticks

    bad = tmp_path / "zero.csv"
    bad.write_text("symbol,trade_time_ms,price,qty\nBTCUSDT,1000,10,1\nBTCUSDT,1001,0,1\n")
    with pytest.raises(FeedError, match=r"tick 2 \(BTC at 1001 ms\) is invalid: price: "):
        encode_ticks(read_ticks(bad), "feed.file:zero.csv")
    proc = subprocess.run([FAUST, "-A", "app", "feed", str(bad)], cwd=ROOT, capture_output=True, text=True,
                          timeout=120, env={**__import__("os").environ, "STORE_URL": "memory://",
                                            "KAFKA_BROKER": "kafka://127.0.0.1:1"})
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert proc.returncode == 2 and len(lines) == 1 and "tick 2 (BTC at 1001 ms) is invalid: price" in lines[0], \
        proc.stderr
