"""taxi/web/app.py, its pure parts: which `next` a login follows, which store paths the report route serves."""

from __future__ import annotations

import pytest

from taxi import layout
from taxi.web.app import REPORT_PATH, is_local_path


@pytest.mark.parametrize("target", ["/", "/runs/new?seed=7", "/tasks/TrainModel_green_1_2021_7449fdcbb1",
                                    "/reports/runs/green/2021-01/v1-0a/report.md"])
def test_a_path_of_this_site_is_followed(target):
    assert is_local_path(target)


@pytest.mark.parametrize("target", ["", "runs/new", "https://evil.example/", "//evil.example/", "///evil.example",
                                    "/\\evil.example", "\\\\evil.example", "/\t/evil.example", "/\n/evil.example",
                                    "/\r/evil.example", " /runs", "/ /evil", "/\x00x", "/\x7f/x",
                                    "javascript:alert(1)", "http:evil.example"])
def test_anything_a_browser_could_read_as_another_site_is_not(target):
    assert not is_local_path(target)


def test_the_report_route_serves_the_reports_and_plots_of_run_folders_only():
    for color in ("green", "yellow"):
        for name in layout.REPORT_FILES:
            assert REPORT_PATH.fullmatch(f"runs/{color}/2021-01/v1-0123456789/{name}"), name
    for path in ("runs/green/2021-01/v1-0123456789/booster.ubj", "runs/green/2021-01/v1-0123456789/registration.json",
                 "runs/red/2021-01/v1-0123456789/report.md", "runs/green/2021-1/v1-0123456789/report.md",
                 "runs/green/2021-01/v1/x/report.md", "../state/secret-key", "runs/green/2021-01/v1-0a/report.mdx",
                 "runs/green/2021-01/../report.md", "runs/green/2021-01/./report.md",
                 "clean/v2-0a/green/2021-01.parquet", "logs/TrainModel/x/a.log", "/etc/passwd"):
        assert not REPORT_PATH.fullmatch(path), path
