"""The HTML pages (API.md "HTML pages") as a person sees them: a real service
(``python controller.py``) over HTTP on three MariaDB partitions (replicas 2,
the database ``kv_pages`` of the shared servers), driven by Debian's
headless Chromium through Playwright (``make chromium`` installs the
browser; Playwright never downloads one).

What is checked is what the browser shows and does: text that holds
``<script>`` stays text (and makes no element), folders and next-page links
lead where they say, a binary value is a size and a download, the edit form
and the delete button change what the JSON API then reads, a stale ETag gets
the 412 page and changes nothing, and, with authentication on, a form post
without the caller's ``_csrf`` is refused.

``KV_SCREENSHOTS=1`` also saves docs/pages-{home,listing,record,error}.png
(the README links them); without it no tracked file is written.
"""

import base64
import os
import shutil
import tempfile
import unittest
import urllib.parse

import requests

import dbservers
import test_server

try:
    from playwright.sync_api import sync_playwright
except ImportError:                   # pragma: no cover - make install provides it
    sync_playwright = None

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update",
                 "--disable-sync"] + (["--no-sandbox"] if os.geteuid() == 0 else [])
DATABASE = "kv_pages"
XSS = "<script>alert(1)</script>"
ALICE_PW = "alice-pw-55!"


def start_service(test_dir: str, extra: str = ""):
    """A fresh ``kv_pages`` database on the three shared servers and
    ``python controller.py`` on it: (ServedProcess, configuration path)."""
    config = dbservers.write_config(os.path.join(test_dir, "c.cfg"),
                                    dbservers.fresh_database(DATABASE), replicas=2, extra=extra)
    port = dbservers.free_port()
    return test_server.ServedProcess(test_server.ServerTest.command + ["127.0.0.1:%d" % port],
                                     config, port), config


def quoted(key: str) -> str:
    return urllib.parse.quote(key, safe="")


@unittest.skipUnless(sync_playwright and os.path.exists(CHROMIUM),
                     "needs Playwright and Debian's chromium (make chromium)")
class BrowserTest(unittest.TestCase):
    """A service (authentication as ``extra`` says) and one headless Chromium."""
    extra = ""

    @classmethod
    def setUpClass(cls):
        cls.dir = tempfile.mkdtemp(prefix="kv-pages-")
        cls.server, cls.config = start_service(cls.dir, cls.extra)
        cls.url = cls.server.url
        cls.http = requests.Session()
        cls.playwright = sync_playwright().start()
        # launch() gives the browser a fresh temporary profile (--user-data-dir) of its own.
        cls.browser = cls.playwright.chromium.launch(executable_path=CHROMIUM, headless=True,
                                                     args=CHROMIUM_ARGS)

    @classmethod
    def tearDownClass(cls):
        cls.browser.close()
        cls.playwright.stop()
        cls.http.close()
        cls.server.stop()
        shutil.rmtree(cls.dir, ignore_errors=True)

    def new_page(self, **context):
        """A page in a new browser context (its own cookies and credentials)
        that fails the test on any JavaScript dialog."""
        context.setdefault("viewport", {"width": 1000, "height": 720})
        browser_context = self.browser.new_context(**context)
        self.addCleanup(browser_context.close)
        page = browser_context.new_page()
        self.dialogs = []
        page.on("dialog", lambda dialog: (self.dialogs.append(dialog.message), dialog.dismiss()))
        return page

    def open(self, page, path: str, status: int = 200):
        response = page.goto(self.url + path)
        self.assertEqual(response.status, status, page.content()[-1500:])
        self.assertEqual(response.headers["content-type"], "text/html; charset=utf-8")
        return response

    def submit(self, page, selector: str, status: int = 200):
        """Click a form's button; the page the answer shows, after checking its status."""
        with page.expect_navigation() as navigation:
            page.click(selector)
        self.assertEqual(navigation.value.status, status, page.content()[-1500:])
        return navigation.value

    def api_put(self, key: str, value: bytes, headers=None):
        r = self.http.put(self.url + "/keys/" + quoted(key), data=value,
                          headers=dict({"Content-Type": "application/octet-stream"},
                                       **(headers or {})))
        self.assertIn(r.status_code, (200, 201), r.text)
        return r.json()

    def api_get(self, key: str, headers=None):
        return self.http.get(self.url + "/keys/" + quoted(key),
                             headers=dict({"Accept": "application/json"}, **(headers or {})))

    def screenshot(self, page, name: str):
        if os.environ.get("KV_SCREENSHOTS"):
            page.screenshot(path=os.path.join(ROOT, "docs", "pages-%s.png" % name), full_page=True)


class PagesTest(BrowserTest):
    """Authentication off: every page and form."""

    def test_script_in_key_and_value_is_shown_as_text(self):
        self.api_put(XSS, XSS.encode())
        page = self.new_page()
        self.open(page, "/keys/" + quoted(XSS))
        self.assertEqual(page.inner_text("h1"), XSS)
        self.assertEqual(page.inner_text("pre.value"), XSS)
        self.assertEqual(page.input_value("textarea[name=value]"), XSS)
        self.assertEqual(page.locator("script").count(), 0)     # the pages have none at all
        self.open(page, "/keys")                  # the key has a "/": a folder of the root
        self.assertIn("<script>alert(1)</", page.locator("a.folder").all_inner_texts())
        self.assertEqual(page.locator("script").count(), 0)
        self.assertEqual(self.dialogs, [])

    def test_folders_search_and_next_page(self):
        for key in ("docs/guide", "docs/intro", "docs/api/get", "docs/api/put", "top"):
            self.api_put(key, b"x")
        page = self.new_page()
        self.open(page, "/keys")
        self.assertIn("docs/", page.locator("a.folder").all_inner_texts())
        self.assertIn("top", page.locator("a.key").all_inner_texts())
        with page.expect_navigation():
            page.click("a.folder:text-is('docs/')")
        self.assertEqual(page.locator("a.folder").all_inner_texts(), ["api/"])
        self.assertEqual(page.locator("a.key").all_inner_texts(), ["guide", "intro"])
        with page.expect_navigation():
            page.click("a.folder:text-is('api/')")
        self.assertEqual(page.locator("a.key").all_inner_texts(), ["get", "put"])
        with page.expect_navigation():
            page.click("a.key:text-is('put')")
        self.assertEqual(page.inner_text("h1"), "docs/api/put")
        with page.expect_navigation():                        # the breadcrumb back up
            page.click(".crumbs a:text-is('docs')")
        self.assertEqual(page.locator("a.key").all_inner_texts(), ["guide", "intro"])
        # the search form (GET ?prefix=)
        page.fill("form.search input[name=prefix]", "docs/api/p")
        with page.expect_navigation():
            page.click("form.search button")
        self.assertEqual(page.locator("a.key").all_inner_texts(), ["put"])
        # one key per page: the next-page links walk every entry once
        self.open(page, "/keys?prefix=docs/&limit=1")
        seen = []
        while True:
            seen += page.locator("a.folder, a.key").all_inner_texts()
            if page.locator("a[rel=next]").count() == 0:
                break
            with page.expect_navigation():
                page.click("a[rel=next]")
        self.assertEqual(seen, ["api/", "guide", "intro"])

    def test_binary_value_is_a_size_and_a_download(self):
        value = bytes(range(256)) * 4
        self.api_put("blob.bin", value)
        page = self.new_page(accept_downloads=True)
        self.open(page, "/keys/blob.bin")
        self.assertIn("1024 bytes", page.inner_text(".binary"))
        self.assertEqual(page.locator("pre.value").count(), 0)
        with page.expect_download() as download:
            page.click("a:text-is('Download')")
        with open(download.value.path(), "rb") as f:
            self.assertEqual(f.read(), value)

    def test_edit_form_changes_the_stored_value(self):
        self.api_put("edit/me", b"old value")
        page = self.new_page()
        self.open(page, "/keys/edit/me")
        page.fill("form.edit textarea[name=value]", "new value\nline <2> & \u00e9")
        self.submit(page, "form.edit button")
        self.assertEqual(page.inner_text("pre.value"), "new value\nline <2> & \u00e9")
        record = self.api_get("edit/me").json()
        self.assertEqual((record["value"], record["version"]),
                         ("new value\nline <2> & \u00e9", 2))   # LF as shown, not the form's CRLF
        self.assertIsNone(record["expires"])
        page.fill("form.edit textarea[name=value]", "with a ttl")  # the answer page's form
        page.fill("form.edit input[name=ttl]", "3600")
        self.submit(page, "form.edit button")
        record = self.api_get("edit/me").json()
        self.assertEqual((record["value"], record["version"]), ("with a ttl", 3))
        self.assertIsNotNone(record["expires"])

    def test_delete_button_deletes(self):
        self.api_put("gone/soon", b"bye")
        page = self.new_page()
        self.open(page, "/keys/gone/soon")
        self.submit(page, "form.delete button")
        self.assertEqual(page.inner_text("h1"), "Deleted")
        self.assertIn("gone/soon", page.inner_text("main"))
        self.assertEqual(self.api_get("gone/soon").status_code, 404)
        with page.expect_navigation():
            page.click("a:text-is('Back to the listing')")
        self.assertEqual(page.inner_text("h1"), "default: gone/")

    def test_stale_etag_gets_the_412_page_and_changes_nothing(self):
        self.api_put("race", b"first")
        page = self.new_page()
        self.open(page, "/keys/race")
        self.api_put("race", b"written meanwhile")          # the shown ETag is now stale
        page.fill("form.edit textarea[name=value]", "from the stale page")
        self.submit(page, "form.edit button", status=412)
        self.assertEqual(page.inner_text("h1"), "412 Precondition Failed")
        self.assertEqual(self.api_get("race").json()["value"], "written meanwhile")
        self.screenshot(page, "error")
        self.open(page, "/keys/race")
        self.api_put("race", b"again meanwhile")
        self.submit(page, "form.delete button", status=412)
        self.assertEqual(self.api_get("race").json()["value"], "again meanwhile")

    def test_new_key_form_on_the_listing(self):
        page = self.new_page()
        self.open(page, "/keys?prefix=made/")
        self.assertEqual(page.input_value("form.new input[name=key]"), "made/")
        page.fill("form.new input[name=key]", "made/by-form")
        page.fill("form.new textarea[name=value]", "hello")
        self.submit(page, "form.new button", status=201)
        self.assertEqual(page.inner_text("h1"), "made/by-form")
        self.assertEqual(self.api_get("made/by-form").json()["value"], "hello")

    def test_home_health_buckets_and_error_pages(self):
        self.api_put("home-key", b"v")
        self.http.put(self.url + "/buckets/notes:alice/keys/n", data=b"v")
        page = self.new_page()
        self.open(page, "/")
        self.assertEqual(page.locator("span.up").count(), 3)
        self.assertEqual(sorted(page.locator("ul.buckets a").all_inner_texts()),
                         ["default", "notes:alice"])
        with page.expect_navigation():
            page.click("ul.buckets a:text-is('notes:alice')")
        self.assertEqual(page.locator("a.key").all_inner_texts(), ["n"])
        self.open(page, "/health")
        self.assertIn("ok", page.inner_text("h1"))
        self.open(page, "/buckets")
        self.assertIn("notes:alice", page.locator("main a").all_inner_texts())
        self.open(page, "/keys/no-such-key", status=404)
        self.assertEqual(page.inner_text("h1"), "404 Not Found")
        self.assertIn("no key", page.inner_text("p.message"))

    def test_negotiation_browser_html_curl_json(self):
        self.api_put("neg", b"v")
        plain = self.http.get(self.url + "/keys/neg")                   # as curl: */*
        self.assertEqual(plain.headers["Content-Type"], "application/json")
        for accept in ("*/*", "application/json, text/html"):
            r = self.http.get(self.url + "/keys/neg", headers={"Accept": accept})
            self.assertEqual(r.headers["Content-Type"], "application/json", accept)
        browser = "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"
        for path, headers in (("/keys/neg", {"Accept": browser}), ("/keys/neg?format=html", {})):
            r = self.http.get(self.url + path, headers=headers)
            self.assertEqual(r.headers["Content-Type"], "text/html; charset=utf-8", path)
        self.assertIn("default", self.http.get(self.url + "/").json()["buckets"])
        # a POST to a record URL that is not a form's PUT or DELETE stays 405
        for body, content_type in (("value=x", "application/x-www-form-urlencoded"),
                                   ("_method=PATCH&value=x", "application/x-www-form-urlencoded"),
                                   ('{"value": "x"}', "application/json")):
            r = self.http.post(self.url + "/keys/neg", data=body,
                               headers={"Content-Type": content_type})
            self.assertEqual(r.status_code, 405, body)
            self.assertEqual(r.headers["Allow"], "GET, HEAD, PUT, DELETE")
        self.assertEqual(self.http.request("PATCH", self.url + "/keys/neg").headers["Allow"],
                         "GET, HEAD, PUT, DELETE")
        self.assertEqual(self.api_get("neg").json()["value"], "v")

    def test_screenshots(self):
        """With KV_SCREENSHOTS=1: docs/pages-*.png of each page kind (the
        error page is taken by the 412 test)."""
        if not os.environ.get("KV_SCREENSHOTS"):
            self.skipTest("set KV_SCREENSHOTS=1 to write docs/pages-*.png")
        for server in dbservers.shared(3):                 # only the keys below
            server.execute("DELETE FROM %s.kv_rows" % DATABASE)
        for key, value in (("notes/2026-11-22", "Bought <b>milk</b> & eggs.\nCalled Ann."),
                           ("notes/2026-11-23", "Read the API contract."),
                           ("config/app.json", '{"theme": "dark", "page_size": 50}'),
                           ("config/feature-flags", "search=on\nexport=off"),
                           ("avatar.png", None), ("readme", "Hello from the kv service.")):
            self.api_put(key, value.encode() if value else base64.b64decode(
                "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR4nGNgYPj/HwADAgH/"
                "eL9GtQAAAABJRU5ErkJggg=="))
        self.http.put(self.url + "/buckets/notes:alice/keys/todo", data=b"call Bob")
        page = self.new_page(viewport={"width": 1000, "height": 560})
        self.open(page, "/")
        self.screenshot(page, "home")
        self.open(page, "/keys")
        self.screenshot(page, "listing")
        self.open(page, "/keys/notes/2026-11-22")
        self.screenshot(page, "record")


class PagesAuthTest(BrowserTest):
    """Authentication on: the forms carry the caller's ``_csrf``; a form post
    without it, or with another caller's, is 403 and changes nothing."""
    extra = "[auth]\nenabled = true\nrefresh_seconds = 1\n"

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        admin = {"Authorization": "Bearer " + dbservers.bootstrap_admin(cls.config)}
        r = cls.http.put(cls.url + "/auth/users/alice", json={"password": ALICE_PW},
                         headers=admin)
        assert r.status_code == 201, r.text
        r = cls.http.post(cls.url + "/auth/rules", headers=admin, json={
            "effect": "allow", "principal": "user:alice", "verbs": ["read", "write", "list"],
            "bucket": "default", "keys": "#"})
        assert r.status_code == 201, r.text
        cls.http.headers.update(admin)

    def alice_page(self):
        return self.new_page(http_credentials={"username": "alice", "password": ALICE_PW})

    def test_forms_carry_the_callers_csrf_token(self):
        self.api_put("secured", b"one")
        page = self.alice_page()
        self.open(page, "/keys/secured")
        self.assertIn("signed in as user:alice", page.inner_text("header"))
        token = page.input_value("form.edit input[name=_csrf]")
        self.assertEqual(page.input_value("form.delete input[name=_csrf]"), token)
        self.assertRegex(token, "^[0-9a-f]{64}$")
        page.fill("form.edit textarea[name=value]", "two")
        self.submit(page, "form.edit button")
        self.assertEqual(self.api_get("secured").json()["value"], "two")
        self.submit(page, "form.delete button")
        self.assertEqual(self.api_get("secured").status_code, 404)

    def test_form_post_without_or_with_a_wrong_csrf_is_refused(self):
        self.api_put("guarded", b"keep me")
        page = self.alice_page()
        self.open(page, "/keys/guarded")
        page.locator("form.edit input[name=_csrf]").evaluate("e => e.remove()")
        page.fill("form.edit textarea[name=value]", "forged")
        self.submit(page, "form.edit button", status=403)
        self.assertIn("_csrf", page.inner_text("p.message"))
        self.open(page, "/keys/guarded")
        page.locator("form.delete input[name=_csrf]").evaluate("e => e.value = '0'.repeat(64)")
        self.submit(page, "form.delete button", status=403)
        self.assertEqual(self.api_get("guarded").json()["value"], "keep me")
        # the admin's token is not alice's: posting it as alice is refused too
        self.open(page, "/keys/guarded")
        admin_token = self.http.get(self.url + "/keys/guarded?format=html").text.split(
            'name="_csrf" value="')[1].split('"')[0]
        self.assertNotEqual(admin_token, page.input_value("form.edit input[name=_csrf]"))
        page.locator("form.edit input[name=_csrf]").evaluate("(e, t) => e.value = t", admin_token)
        page.fill("form.edit textarea[name=value]", "forged again")
        self.submit(page, "form.edit button", status=403)
        self.assertEqual(self.api_get("guarded").json()["value"], "keep me")

    def test_anonymous_browser_gets_a_login_challenge(self):
        r = requests.get(self.url + "/keys/anything", headers={"Accept": "text/html"})
        self.assertEqual(r.status_code, 401)
        self.assertIn("Basic", r.headers["WWW-Authenticate"])
        self.assertIn("401 Unauthorized", r.text)
        self.assertIn("not signed in", r.text)
        home = requests.get(self.url + "/", headers={"Accept": "application/json"}).json()
        self.assertEqual((home["buckets"], "partitions" in home), ([], False))


if __name__ == "__main__":
    unittest.main()
