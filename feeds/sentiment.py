"""Real text → ``sentiment.update`` events, scored with VADER's lexicon (the ``vaderSentiment``
package; Hutto & Gilbert, "VADER: A Parsimonious Rule-based Model for Sentiment Analysis of Social
Media Text", ICWSM 2014).

The bundled text source (``vader_tweets_ground_truth.tsv``: ``id<TAB>human rating<TAB>text``)
has no timestamps, tokens or follower counts, so this feed assigns them itself, and says so:

- event time: ``start_ms`` + i / ``rate_per_s`` seconds for the i-th text (file order);
- token: round-robin over ``tokens`` (the texts are not about crypto; this is a load source);
- followers: 0 (unknown).

bullish_pct = 50 × (compound + 1), VADER's normalised compound score mapped to 0-100 %;
confidence = pos + neg, the share of the text that carries sentiment (a neutral text weighs
nothing in the follower-weighted windows).
"""

from __future__ import annotations

import csv
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path

from feeds.files import FeedError
from models.events import SentimentUpdate


def read_updates(path: str | Path, tokens: Sequence[str], start_ms: int, rate_per_s: float,
                 source: str = "feed.sentiment") -> Iterator[SentimentUpdate]:
    """One update per text line of a TSV file (``id``, ``rating``, ``text``; the text is the last
    column). Raises :class:`FeedError` for a missing file, empty token list or bad rate."""
    from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

    path = Path(path)
    if not path.is_file():
        raise FeedError(f"no such file: {path}")
    if not tokens:
        raise FeedError("at least one token is needed")
    if not rate_per_s > 0:
        raise FeedError(f"rate must be > 0 updates/s, got {rate_per_s}")
    analyzer = SentimentIntensityAnalyzer()
    step = 1000.0 / rate_per_s
    with path.open(encoding="utf-8", newline="") as fh:
        for i, row in enumerate(csv.reader(fh, delimiter="\t")):
            if not row:
                continue
            scores = analyzer.polarity_scores(row[-1])
            yield SentimentUpdate(
                event_id=uuid.uuid4(), timestamp=int(start_ms + i * step), token=tokens[i % len(tokens)].upper(),
                source=source, bullish_pct=round(50.0 * (scores["compound"] + 1.0), 4),
                confidence=round(min(1.0, scores["pos"] + scores["neg"]), 4), followers=0, text_source=path.name)
