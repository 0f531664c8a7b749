"""News headlines -> the NEWS table, from RSS/Atom feeds and Reddit's public JSON listings.

Feeds: the body is fetched through ``HttpClient`` and parsed with feedparser. ``published_at`` is the
entry's published (else updated) time converted to UTC; an entry with neither is a SourceSchemaError.
``text`` is the summary with HTML tags removed; ``subject`` is the entry's first category (else the feed's,
else ""). A body that is not a feed at all is a SourceError.

Reddit: ``GET /r/{sub}/new.json?limit=100&raw_json=1[&after=t3_...]`` answering ``{"kind": "Listing",
"data": {"after": ..., "children": [{"kind": "t3", "data": {"id", "title", "selftext", "created_utc",
"permalink", "url", ...}}]}}``, newest first. Pages follow ``data.after`` and stop once a page reaches
posts older than ``since``. ``url`` is the post's own permalink on www.reddit.com, ``source`` is
``reddit/r/{sub}`` and ``subject`` the subreddit.

``id`` = sha1 hex of ``url``, or of ``f"{source}|{published_at ISO-8601}|{title}"`` without a url.
``since``/``until`` select ``since <= published_at < until`` (tz-aware UTC).
"""

from __future__ import annotations

import calendar
import html
import logging
import re
from datetime import datetime
from typing import Any

import feedparser
import pandas as pd

from cryptopredict.data.schemas import NEWS, news_id
from cryptopredict.data.sources.http import (
    ClientConfig,
    HttpClient,
    SourceError,
    SourceSchemaError,
    number,
    require,
    table_frame,
    utc,
    within,
)

log = logging.getLogger(__name__)

FEED_MIN_INTERVAL_S = 1.0

REDDIT_BASE_URL = "https://www.reddit.com"
REDDIT_WEB_URL = "https://www.reddit.com"  # permalinks always point here, whatever the API base URL
REDDIT_MIN_INTERVAL_S = 6.0  # unauthenticated JSON access allows about 10 requests per minute
REDDIT_PAGE_SIZE = 100

_TAG = re.compile(r"<[^>]+>")
_FEED_ACCEPT = "application/rss+xml, application/atom+xml, application/xml;q=0.9, */*;q=0.5"


def _plain_text(fragment: str) -> str:
    return " ".join(html.unescape(_TAG.sub(" ", fragment)).split())


def _news_frame(rows: list[dict[str, Any]], since: pd.Timestamp | None,
                until: pd.Timestamp | None) -> pd.DataFrame:
    frame = table_frame(NEWS, {c: [r[c] for r in rows] for c in NEWS.columns})
    frame = frame[within(frame["published_at"], since, until)].drop_duplicates("id", keep="first")
    return frame.sort_values(["published_at", "id"], kind="stable").reset_index(drop=True)


def _row(source: str, subject: str, title: str, text: str, url: str,
         published: pd.Timestamp) -> dict[str, Any]:
    return {"id": news_id(url, source, published, title), "published_at": published, "source": source,
            "subject": subject, "title": title, "text": text, "url": url}


# --- RSS / Atom ---------------------------------------------------------------------------------------


def make_feed_client(feed_url: str, config: ClientConfig | None = None) -> HttpClient:
    """A client whose base URL is the feed URL itself."""
    return HttpClient(f"rss:{feed_url}", feed_url, config or ClientConfig(min_interval_s=FEED_MIN_INTERVAL_S),
                      headers={"Accept": _FEED_ACCEPT})


def fetch_feed(
    feed_url: str,
    source: str,
    *,
    since: datetime | None = None,
    until: datetime | None = None,
    client: HttpClient | None = None,
) -> pd.DataFrame:
    """Entries of the RSS/Atom feed at ``feed_url``, published by ``source`` (e.g. CoinTelegraph)."""
    start, end = utc(since, "since"), utc(until, "until")
    own = client is None
    http = client or make_feed_client(feed_url)
    try:
        body = http.get_bytes(feed_url)
    finally:
        if own:
            http.close()
    parsed = feedparser.parse(body)
    if not parsed.get("version") and not parsed.entries:
        reason = parsed.get("bozo_exception", "no RSS/Atom root element")
        raise SourceError(f"{source}: {feed_url} is not an RSS/Atom feed: {reason}")
    feed_subject = _first_term(parsed.feed.get("tags"))
    rows = []
    for i, entry in enumerate(parsed.entries):
        stamp = entry.get("published_parsed") or entry.get("updated_parsed")
        if stamp is None:
            raise SourceSchemaError(f"{source}: field entries[{i}].published (or updated) is missing or "
                                    f"unparseable in {feed_url}")
        published = pd.Timestamp(calendar.timegm(stamp), unit="s", tz="UTC")
        rows.append(_row(source, _first_term(entry.get("tags")) or feed_subject,
                         _plain_text(entry.get("title", "")), _plain_text(entry.get("summary", "")),
                         entry.get("link", ""), published))
    log.debug("%s: %d feed entries", source, len(rows))
    return _news_frame(rows, start, end)


def _first_term(tags: Any) -> str:
    if isinstance(tags, list):
        for tag in tags:
            term = tag.get("term") if isinstance(tag, dict) else None
            if isinstance(term, str) and term.strip():
                return term.strip()
    return ""


# --- Reddit ---------------------------------------------------------------------------------------------


def make_reddit_client(base_url: str = REDDIT_BASE_URL, config: ClientConfig | None = None) -> HttpClient:
    """A Reddit public-JSON client."""
    return HttpClient("reddit", base_url, config or ClientConfig(min_interval_s=REDDIT_MIN_INTERVAL_S))


def fetch_subreddit(
    subreddit: str,
    *,
    since: datetime | None = None,
    until: datetime | None = None,
    max_pages: int = 10,
    client: HttpClient | None = None,
) -> pd.DataFrame:
    """Newest posts of r/``subreddit``, paging back until ``since`` (or ``max_pages`` pages of 100)."""
    start, end = utc(since, "since"), utc(until, "until")
    source = f"reddit/r/{subreddit}"
    own = client is None
    http = client or make_reddit_client()
    rows: list[dict[str, Any]] = []
    after: str | None = None
    try:
        for page in range(max_pages):
            body = http.get_json(f"/r/{subreddit}/new.json",
                                 {"limit": REDDIT_PAGE_SIZE, "raw_json": 1, "after": after})
            listing = require(body, "data", dict, source=source, where="response")
            children = require(listing, "children", list, source=source, where="response.data")
            oldest: pd.Timestamp | None = None
            for i, child in enumerate(children):
                if isinstance(child, dict) and child.get("kind", "t3") != "t3":
                    continue
                row = _reddit_row(child, subreddit, source, f"page[{page}].data.children[{i}]")
                rows.append(row)
                oldest = row["published_at"] if oldest is None else min(oldest, row["published_at"])
            after = listing.get("after")
            if not after or not children or (start is not None and oldest is not None and oldest < start):
                break
        else:
            log.info("%s: stopped after max_pages=%d; older posts not fetched", source, max_pages)
    finally:
        if own:
            http.close()
    return _news_frame(rows, start, end)


def _reddit_row(child: Any, subreddit: str, source: str, where: str) -> dict[str, Any]:
    post = require(child, "data", dict, source=source, where=where)
    where = f"{where}.data"
    title = require(post, "title", str, source=source, where=where)
    created = number(require(post, "created_utc", (int, float), source=source, where=where),
                     source=source, where=f"{where}.created_utc")
    permalink = require(post, "permalink", str, source=source, where=where)
    selftext = post.get("selftext") or ""
    if not isinstance(selftext, str):
        raise SourceSchemaError(f"{source}: field {where}.selftext is {type(selftext).__name__}, "
                                "expected str")
    published = pd.Timestamp(created, unit="s", tz="UTC")
    return _row(source, subreddit, title, selftext, REDDIT_WEB_URL + permalink, published)
