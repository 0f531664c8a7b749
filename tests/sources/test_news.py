"""RSS/Atom feeds and Reddit listings -> NEWS."""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime

import pandas as pd
import pytest

from cryptopredict.data.schemas import NEWS
from cryptopredict.data.sources import news
from cryptopredict.data.sources.http import ClientConfig, SourceError, SourceSchemaError
from tests.sources.conftest import SourceFaults, assert_schema, fixture_bytes
from tests.support.replay_server import ReplayServer, Reply

RSS = "application/rss+xml"
REDDIT_PATH = "/r/CryptoCurrency/new.json"


def sha1(text: str) -> str:
    return hashlib.sha1(text.encode()).hexdigest()


def ts(text: str) -> pd.Timestamp:
    return pd.Timestamp(text).tz_convert("UTC")


# --- feeds --------------------------------------------------------------------------------------------


def feed_fetch(replay: ReplayServer, config: ClientConfig, path: str = "/rss", source: str = "CoinTelegraph",
               since: datetime | None = None, until: datetime | None = None) -> pd.DataFrame:
    url = replay.url(path)
    return news.fetch_feed(url, source, since=since, until=until, client=news.make_feed_client(url, config))


def test_rss_happy_path(replay: ReplayServer, fast_config: ClientConfig) -> None:
    replay.route("GET", "/rss", Reply(200, fixture_bytes("rss/cointelegraph.xml"), content_type=RSS))
    frame = feed_fetch(replay, fast_config)
    assert_schema(frame, NEWS)
    no_url_id = sha1("CoinTelegraph|2024-01-01T18:00:00+00:00|Market wrap: quiet first day of 2024")
    assert frame.to_dict("records") == [
        {"id": no_url_id, "published_at": ts("2024-01-01T18:00:00Z"), "source": "CoinTelegraph",
         "subject": "Crypto", "title": "Market wrap: quiet first day of 2024",
         "text": "Volumes stayed thin on New Year's Day.", "url": ""},
        {"id": sha1("https://cointelegraph.com/news/ether-climbs-above-2300-dencun-testnet"),
         "published_at": ts("2024-01-03T02:15:00Z"), "source": "CoinTelegraph", "subject": "Ethereum",
         "title": "Ether climbs above $2,300 ahead of Dencun testnet",
         "text": "Ether gained 4% in US trading hours.",
         "url": "https://cointelegraph.com/news/ether-climbs-above-2300-dencun-testnet"},
        {"id": sha1("https://cointelegraph.com/news/bitcoin-etf-decision-nears-sec-meets-exchanges"),
         "published_at": ts("2024-01-03T14:30:00Z"), "source": "CoinTelegraph", "subject": "Bitcoin",
         "title": "Bitcoin ETF decision nears as SEC meets exchanges",
         "text": "The SEC held meetings with exchanges & issuers on Tuesday.",
         "url": "https://cointelegraph.com/news/bitcoin-etf-decision-nears-sec-meets-exchanges"},
    ]
    assert "rss+xml" in replay.requests[0].headers["accept"]


def test_atom_uses_updated_and_window(replay: ReplayServer, fast_config: ClientConfig) -> None:
    replay.route("GET", "/feed", Reply(200, fixture_bytes("rss/decrypt_atom.xml"),
                                       content_type="application/atom+xml"))
    frame = feed_fetch(replay, fast_config, path="/feed", source="Decrypt")
    assert frame[["published_at", "subject", "title", "text"]].to_dict("records") == [
        {"published_at": ts("2024-01-03T08:45:00Z"), "subject": "Solana",
         "title": "Solana developers ship new validator client",
         "text": "A second client improves resilience."}]
    later = feed_fetch(replay, fast_config, path="/feed", source="Decrypt",
                       since=datetime(2024, 1, 3, 8, 46, tzinfo=UTC))
    assert later.empty


def test_rss_since_until(replay: ReplayServer, fast_config: ClientConfig) -> None:
    replay.route("GET", "/rss", Reply(200, fixture_bytes("rss/cointelegraph.xml"), content_type=RSS))
    frame = feed_fetch(replay, fast_config, since=datetime(2024, 1, 2, tzinfo=UTC),
                       until=datetime(2024, 1, 3, 14, 30, tzinfo=UTC))
    assert frame["title"].tolist() == ["Ether climbs above $2,300 ahead of Dencun testnet"]


def test_rss_empty_channel(replay: ReplayServer, fast_config: ClientConfig) -> None:
    body = b'<?xml version="1.0"?><rss version="2.0"><channel><title>t</title></channel></rss>'
    replay.route("GET", "/rss", Reply(200, body, content_type=RSS))
    frame = feed_fetch(replay, fast_config)
    assert frame.empty
    assert_schema(frame, NEWS)


def test_rss_entry_without_a_date_names_the_field(replay: ReplayServer, fast_config: ClientConfig) -> None:
    pub_date = b"<pubDate>Tue, 02 Jan 2024 21:15:00 -0500</pubDate>"
    body = fixture_bytes("rss/cointelegraph.xml").replace(pub_date, b"")
    replay.route("GET", "/rss", Reply(200, body, content_type=RSS))
    with pytest.raises(SourceSchemaError,
                       match=r"^CoinTelegraph: field entries\[1\]\.published \(or updated\)"):
        feed_fetch(replay, fast_config)


def test_feed_url_must_match_the_client_origin(replay: ReplayServer, fast_config: ClientConfig) -> None:
    client = news.make_feed_client(replay.url("/rss"), fast_config)
    with pytest.raises(SourceError, match=r"refusing to fetch cointelegraph\.com"):
        news.fetch_feed("https://cointelegraph.com/rss", "CoinTelegraph", client=client)


class TestFeedFaults(SourceFaults):
    path = "/rss"
    ok_body = fixture_bytes("rss/cointelegraph.xml")
    content_type = RSS
    malformed_body = b'{"this is": "not a feed"'
    malformed_match = "is not an RSS/Atom feed"

    def fetch(self, base_url: str, config: ClientConfig) -> pd.DataFrame:
        url = base_url + "/rss"
        return news.fetch_feed(url, "CoinTelegraph", client=news.make_feed_client(url, config))


# --- Reddit -------------------------------------------------------------------------------------------


def reddit_fetch(replay: ReplayServer, config: ClientConfig, since: datetime | None = None,
                 until: datetime | None = None, max_pages: int = 10) -> pd.DataFrame:
    client = news.make_reddit_client(replay.base_url, config)
    return news.fetch_subreddit("CryptoCurrency", since=since, until=until, max_pages=max_pages,
                                client=client)


def test_reddit_pages_until_since(replay: ReplayServer, fast_config: ClientConfig) -> None:
    replay.route("GET", REDDIT_PATH, [Reply(200, fixture_bytes("reddit/new_page1.json")),
                                      Reply(200, fixture_bytes("reddit/new_page2.json")),
                                      Reply(500, b"must not be fetched")])
    frame = reddit_fetch(replay, fast_config, since=datetime(2024, 1, 2, tzinfo=UTC))
    assert [r.query for r in replay.requests] == [
        {"limit": ["100"], "raw_json": ["1"]}, {"limit": ["100"], "raw_json": ["1"], "after": ["t3_18xk2b1"]}]
    assert_schema(frame, NEWS)
    permalink = "https://www.reddit.com/r/CryptoCurrency/comments/18x1c7d/what_are_you_dcaing/"
    assert frame.iloc[0].to_dict() == {
        "id": sha1(permalink), "published_at": ts("2024-01-02T09:00:00Z"),
        "source": "reddit/r/CryptoCurrency",
        "subject": "CryptoCurrency", "title": "What are you DCA-ing into this year?",
        "text": "Curious what everyone is stacking &amp; why.", "url": permalink}
    assert frame["published_at"].tolist() == [ts("2024-01-02T09:00:00Z"), ts("2024-01-03T00:10:00Z"),
                                              ts("2024-01-03T10:00:00Z")]  # the 2024-01-01 post is cut
    link_post = "https://www.reddit.com/r/CryptoCurrency/comments/18xk2b1/bitcoin_briefly_tops_45k/"
    assert frame["url"].iloc[1] == link_post  # the permalink, not the linked article


def test_reddit_stops_when_after_is_null_and_at_max_pages(replay: ReplayServer,
                                                          fast_config: ClientConfig) -> None:
    last = json.loads(fixture_bytes("reddit/new_page2.json"))
    last["data"]["after"] = None
    replay.route("GET", REDDIT_PATH, [Reply(200, fixture_bytes("reddit/new_page1.json")), Reply(200, last)])
    assert len(reddit_fetch(replay, fast_config)) == 4
    assert len(replay.requests) == 2
    replay.route("GET", REDDIT_PATH, Reply(200, fixture_bytes("reddit/new_page1.json")))
    assert len(reddit_fetch(replay, fast_config, max_pages=3)) == 2  # same page thrice, ids deduplicated
    assert len(replay.requests) == 5


def test_reddit_empty_listing(replay: ReplayServer, fast_config: ClientConfig) -> None:
    replay.route("GET", REDDIT_PATH, Reply(200, {"kind": "Listing", "data": {"after": None, "children": []}}))
    frame = reddit_fetch(replay, fast_config)
    assert frame.empty
    assert_schema(frame, NEWS)


def test_reddit_unexpected_schema_names_the_field(replay: ReplayServer, fast_config: ClientConfig) -> None:
    body = json.loads(fixture_bytes("reddit/new_page1.json"))
    del body["data"]["children"][1]["data"]["created_utc"]
    replay.route("GET", REDDIT_PATH, Reply(200, body))
    with pytest.raises(SourceSchemaError, match=r"^reddit/r/CryptoCurrency: missing field "
                                                r"page\[0\]\.data\.children\[1\]\.data\.created_utc$"):
        reddit_fetch(replay, fast_config)
    replay.route("GET", REDDIT_PATH, Reply(200, {"kind": "Listing", "data": {"after": None}}))
    with pytest.raises(SourceSchemaError, match=r"missing field response\.data\.children$"):
        reddit_fetch(replay, fast_config)


class TestRedditFaults(SourceFaults):
    path = REDDIT_PATH
    ok_body = fixture_bytes("reddit/new_page2.json")  # its oldest post predates `since`: one page only

    def fetch(self, base_url: str, config: ClientConfig) -> pd.DataFrame:
        return news.fetch_subreddit("CryptoCurrency", since=datetime(2024, 1, 2, tzinfo=UTC),
                                    client=news.make_reddit_client(base_url, config))
