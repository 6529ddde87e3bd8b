"""taxi/web/report_page.py: a report's markdown as sanitized HTML."""

from __future__ import annotations

import re

from taxi.web.report_page import render

PLOTS = {"tuning.png": "/reports/runs/green/2021-01/v1-0a/tuning.png"}


def tags(html: str) -> set[str]:
    return set(re.findall(r"<([a-z0-9]+)", html))


def test_a_report_s_tables_headings_code_and_plots_are_html():
    html = render("# taxi-duration-green v1: champion\n\nRun `abc`, **champion**.\n\n| RMSE | value |\n|---|---:|\n"
                  "| gate rows | 5.5435 |\n\n![tuning](tuning.png)\n", PLOTS)
    assert "<h1>taxi-duration-green v1: champion</h1>" in html
    assert "<code>abc</code>" in html and "<strong>champion</strong>" in html
    assert "<th>RMSE</th>" in html and '<td style="text-align:right">5.5435</td>' in html
    assert '<img src="/reports/runs/green/2021-01/v1-0a/tuning.png" alt="tuning">' in html
    assert tags(html) == {"h1", "p", "code", "strong", "table", "thead", "tbody", "tr", "th", "td", "img"}


def test_html_in_a_report_is_shown_as_text():
    html = render("# <script>window.pwned = 1</script>\n\n<img src=x onerror=alert(1)>\n\n"
                  "| a |\n|---|\n| <iframe src=//evil.example></iframe> |\n", PLOTS)
    assert "&lt;script&gt;window.pwned = 1&lt;/script&gt;" in html
    assert "&lt;img src=x onerror=alert(1)&gt;" in html and "&lt;iframe src=//evil.example&gt;" in html
    assert tags(html) == {"h1", "p", "table", "thead", "tbody", "tr", "th", "td"}


def test_a_link_keeps_only_a_web_or_mail_scheme():
    html = render("[a](javascript:alert(1)) [b](JAVASCRIPT:alert(1)) [c](vbscript:x) [d](data:text/html,x) "
                  "[e](tel:123) [f](https://example.org/x) [g](mailto:ops@example.org)", PLOTS)
    assert re.findall(r'href="([^"]*)"', html) == ["https://example.org/x", "mailto:ops@example.org"]
    assert 'rel="noopener noreferrer"' in html


def test_an_image_shows_only_if_it_is_one_of_the_report_s_plots():
    """Any other source (another site, a data: URL, another file of the store) leaves the image without one."""
    html = render("![a](tuning.png) ![b](https://evil.example/x.png) ![c](data:image/png;base64,iVBORw0KGgo=) "
                  "![d](../../../state/secret-key) ![e](/reports/runs/green/2021-01/v1-0a/drift.png)", PLOTS)
    assert re.findall(r'src="([^"]*)"', html) == [PLOTS["tuning.png"]]
    assert html.count("<img") == 5
