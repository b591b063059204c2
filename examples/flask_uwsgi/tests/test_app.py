"""The three pages' texts and links, through Flask's test client (run by the CI pipeline:
`python -m unittest discover -s tests -t . -v`)."""
import json
import os
import unittest
from html.parser import HTMLParser

os.environ.setdefault("SCALESET_INSTANCE", "vmssdevops2_0")
os.environ.setdefault("SCALESET_IMAGE", "42")

from app import app  # noqa: E402  (after the environment the app reads at import)

INTRO = "Sample app to demo Azure DevOps for VMSS. You are currently on "


class Page(HTMLParser):
    """The title, the paragraphs' text, the links (href, text) and the footer of a page."""

    def __init__(self, html):
        super().__init__()
        self.title, self.paragraphs, self.links, self.spans = "", [], [], {}
        self._tag, self._href, self._span = None, None, None
        self.feed(html)

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        self._tag = tag
        if tag == "p":
            self.paragraphs.append("")
        elif tag == "a":
            self._href = attrs.get("href")
            self.links.append([self._href, ""])
        elif tag == "span":
            self._span = attrs.get("id")

    def handle_endtag(self, tag):
        if tag == "a":
            self._href = None
        elif tag == "span":
            self._span = None
        self._tag = None

    def handle_data(self, data):
        if self._tag == "title":
            self.title += data
        if self.paragraphs and self._tag in ("p", "a") and self._href is None:
            self.paragraphs[-1] += data
        if self._href is not None:
            self.links[-1][1] += data
        if self._span:
            self.spans[self._span] = self.spans.get(self._span, "") + data


class PagesTest(unittest.TestCase):
    def setUp(self):
        self.client = app.test_client()

    def page(self, path):
        r = self.client.get(path)
        self.assertEqual(r.status_code, 200)
        self.assertEqual(r.mimetype, "text/html")
        return Page(r.get_data(as_text=True))

    def check(self, path, title, where, links):
        p = self.page(path)
        self.assertEqual(p.title, title)
        self.assertEqual(p.paragraphs[0], INTRO + where + ".")
        self.assertEqual([tuple(link) for link in p.links], links)
        self.assertEqual(p.spans, {"instance": "vmssdevops2_0", "image": "42"})

    def test_home_page(self):
        self.check(
            "/",
            "Home",
            "the Home page",
            [("/page1", "Navigate to page1"), ("/page2", "Navigate to Page2")],
        )

    def test_page1(self):
        self.check(
            "/page1",
            "Page1",
            "Page1",
            [("/", "Navigate to Home"), ("/page2", "Navigate to Page2")],
        )

    def test_page2(self):
        self.check(
            "/page2",
            "Page2",
            "Page2",
            [("/", "Navigate to Home"), ("/page1", "Navigate to Page1")],
        )

    def test_links_lead_to_pages(self):
        for path in ("/", "/page1", "/page2"):
            for href, _ in self.page(path).links:
                self.assertEqual(self.client.get(href).status_code, 200, href)

    def test_health(self):
        r = self.client.get("/health")
        self.assertEqual(r.status_code, 200)
        self.assertEqual(r.mimetype, "application/json")
        self.assertEqual(json.loads(r.data), {"ApplicationHealthState": "Healthy"})

    def test_unknown_path_is_404(self):
        self.assertEqual(self.client.get("/nope").status_code, 404)


if __name__ == "__main__":
    unittest.main()
