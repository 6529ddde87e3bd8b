"""Which month a scheduled run trains (taxi.schedule), and the probe that asks the source."""

from __future__ import annotations

import datetime as dt
import http.server
import threading

import pytest

from taxi import schedule, source

SOURCE = "https://tlc.example/{color}_tripdata_{year}-{month:02d}.parquet"


def published_through(last: str, first: str = "2009-01"):
    """An `is_published` for a source holding every month from `first` to `last` (YYYY-MM), recording probes."""
    probed: list[str] = []

    def is_published(url: str) -> bool:
        probed.append(url)
        month = url.rsplit("_", 1)[-1].removesuffix(".parquet")
        return first <= month <= last

    return is_published, probed


@pytest.mark.parametrize("today,last_published,expected", [
    (dt.date(2024, 5, 20), "2024-04", (2024, 3)),   # validation month 2024-04 is over; both files are out
    (dt.date(2024, 5, 20), "2024-03", (2024, 2)),   # 2024-04 not out yet: 2024-03 cannot be validated
    (dt.date(2024, 5, 20), "2024-02", (2024, 1)),   # the TLC's usual lag of about two months
    (dt.date(2024, 5, 1), "2024-12", (2024, 3)),    # never a month whose validation month is not over
    (dt.date(2024, 1, 10), "2023-12", (2023, 11)),  # year boundary: validated on December
    (dt.date(2024, 2, 29), "2024-01", (2023, 12)),  # year boundary: trained on December, validated on January
    (dt.date(2024, 3, 15), "2023-12", (2023, 11)),  # unpublished January moves back across the year
    (dt.date(2021, 3, 1), "2021-02", (2021, 1)),
])
def test_newest_trainable_month(today, last_published, expected):
    is_published, _ = published_through(last_published)
    assert schedule.newest_trainable_month("green", SOURCE, today, is_published) == expected


@pytest.mark.parametrize("today,last_published,expected", [
    (dt.date(2024, 5, 20), "2024-04", (2024, 4)),   # the month just over
    (dt.date(2024, 5, 1), "2024-12", (2024, 4)),    # never the month still running
    (dt.date(2024, 5, 20), "2024-02", (2024, 2)),   # the TLC's usual lag
    (dt.date(2024, 1, 10), "2023-11", (2023, 11)),  # across the year boundary
])
def test_newest_published_month_is_what_a_scoring_run_scores(today, last_published, expected):
    is_published, probed = published_through(last_published)
    assert schedule.newest_published_month("green", SOURCE, today, is_published) == expected
    assert len(probed) == len(set(probed))


def test_no_month_published_within_the_lookback_gives_no_month_to_score():
    is_published, probed = published_through("2022-12")
    assert schedule.newest_published_month("green", SOURCE, dt.date(2024, 6, 1), is_published) is None
    assert probed == [SOURCE.format(color="green", year=year, month=month)
                      for year, month in [(2024, m) for m in range(5, 0, -1)] + [(2023, m) for m in range(12, 5, -1)]]


def test_both_files_must_be_published():
    """A gap in the source (2024-02 missing) rules out the month before it and the month itself."""
    months = {"2023-12", "2024-01", "2024-03", "2024-04"}

    def is_published(url: str) -> bool:
        return url.rsplit("_", 1)[-1].removesuffix(".parquet") in months

    assert schedule.newest_trainable_month("green", SOURCE, dt.date(2024, 5, 20), is_published) == (2024, 3)
    months.discard("2024-04")
    assert schedule.newest_trainable_month("green", SOURCE, dt.date(2024, 5, 20), is_published) == (2023, 12)


def test_nothing_published_within_the_lookback_gives_none():
    is_published, probed = published_through("2022-12")
    assert schedule.newest_trainable_month("yellow", SOURCE, dt.date(2024, 6, 1), is_published) is None
    # candidates 2024-04 back to 2023-05: only their validation months are asked for, newest first
    assert probed[0] == "https://tlc.example/yellow_tripdata_2024-05.parquet"
    assert probed[-1] == "https://tlc.example/yellow_tripdata_2023-06.parquet"
    assert len(probed) == len(set(probed)) == schedule.LOOKBACK_MONTHS


def test_each_url_is_probed_once_newest_first():
    is_published, probed = published_through("2024-01")
    assert schedule.newest_trainable_month("green", SOURCE, dt.date(2024, 5, 20), is_published) == (2023, 12)
    assert [url.rsplit("_", 1)[-1] for url in probed] == [
        "2024-04.parquet", "2024-03.parquet", "2024-02.parquet", "2024-01.parquet", "2023-12.parquet"]


def test_folder_and_file_url_sources(tmp_path):
    (tmp_path / "green_tripdata_2023-01.parquet").write_bytes(b"x")
    (tmp_path / "green_tripdata_2023-02.parquet").write_bytes(b"x")
    for where in (str(tmp_path), f"file://{tmp_path}"):
        assert schedule.newest_trainable_month("green", where, dt.date(2023, 6, 1),
                                               source.published) == (2023, 1)
    assert not source.published(str(tmp_path / "green_tripdata_2023-03.parquet"))


class StatusHandler(http.server.BaseHTTPRequestHandler):
    """Answers HEAD /<status> with that status code."""

    def do_HEAD(self) -> None:
        self.send_response(int(self.path.strip("/")))
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args) -> None:
        pass


@pytest.fixture(scope="module")
def status_server() -> str:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), StatusHandler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def test_http_probe_on_the_tlc_mirror(tlc_http):
    assert source.published(f"{tlc_http}/green_tripdata_2021-01.parquet")
    assert not source.published(f"{tlc_http}/green_tripdata_2021-03.parquet")


@pytest.mark.parametrize("status,published", [(200, True), (404, False), (403, False)])
def test_http_probe_reads_the_status(status_server, status, published):
    assert source.published(f"{status_server}/{status}") is published


def test_http_probe_raises_on_a_server_error(status_server):
    """A failing source must not read as 'not published' (the run would silently train an older month)."""
    with pytest.raises(source.TransientSourceError, match=f"^HTTP 503 from {status_server}/503$"):
        source.published(f"{status_server}/503")
