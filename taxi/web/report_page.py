"""A run's report as a page: its markdown rendered to HTML (markdown-it-py, CommonMark with tables), then cleaned by
nh3 to an allow-list, so that whatever text the store holds shows as text and never runs (pure: no Flask)."""

from __future__ import annotations

from collections.abc import Mapping

import nh3
from markdown_it import MarkdownIt

# what a report is made of (taxi.report.markdown): headings, paragraphs, lists, tables, code, emphasis, links, plots
TAGS = {"h1", "h2", "h3", "h4", "h5", "h6", "p", "br", "hr", "ul", "ol", "li", "blockquote", "table", "thead",
        "tbody", "tr", "th", "td", "pre", "code", "em", "strong", "a", "img"}
ATTRIBUTES = {"a": {"href", "title"}, "img": {"src", "alt", "title"}, "th": {"style"}, "td": {"style"},
              "ol": {"start"}}
LINK_SCHEMES = {"http", "https", "mailto"}
# raw HTML in the markdown is text (html=False); CommonMark's own link check refuses javascript:, vbscript:, file:
_MARKDOWN = MarkdownIt("commonmark", {"html": False}).enable("table")


def render(text: str, images: Mapping[str, str]) -> str:
    """The report's markdown `text` as sanitized HTML. An image shows only if its source is one of `images`' names
    (the plots stored beside the report), and then points at the URL it maps to; any other image has no source."""

    def image_source(tag: str, attribute: str, value: str) -> str | None:
        if tag == "img" and attribute == "src":
            return images.get(value)
        return value

    return nh3.clean(_MARKDOWN.render(text), tags=TAGS, clean_content_tags={"script", "style"},
                     attributes=ATTRIBUTES, attribute_filter=image_source, url_schemes=LINK_SCHEMES,
                     filter_style_properties={"text-align"}, strip_comments=True)
