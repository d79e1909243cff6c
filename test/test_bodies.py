"""Request bodies (kv/http/bodies.py) and listing items:
the cost of parsing hostile POST /batch and record bodies is bounded by what
a valid body holds, not by the body's size, and the refusals are 400s that
apply nothing; JSON and XML listing items carry ``expires``.

The cost tests parse 16 MiB bodies (the default max_batch_bytes) in a child
process each and read its peak RSS; the HTTP tests run the WSGI application
in-process on SQLite partitions (paste.fixture, as test_api does).
"""

import json
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
import time
import unittest
from xml.etree import ElementTree

import paste.fixture

import controller
from kv.errors import InvalidRequest
from kv.http.bodies import parse_batch_body, parse_record_body

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MiB = 1 << 20

# Each hostile body: (media type, head, unit repeated to fill 16 MiB, separator,
# tail); a unit with %06x is numbered.
HOSTILE = {
    "json empty ops": ("application/json", b'{"ops":[', b"{}", b",", b"]}"),
    "json empty arrays": ("application/json", b'{"ops":[', b"[]", b",", b"]}"),
    "json empty strings": ("application/json", b'{"ops":[', b'""', b",", b"]}"),
    "json arrays in an op": ("application/json", b'{"ops":[{"op":"get","key":"a","x":[',
                             b"[]", b",", b"]}]}"),
    "json strings in an op": ("application/json", b'{"ops":[{"op":"get","key":"a","x":[',
                              b'""', b",", b"]}]}"),
    "json fields in an op": ("application/json", b'{"ops":[{"op":"get",', b'"k":0', b",", b"}]}"),
    "json deep nesting": ("application/json", b"", b'{"a":[', b"", b""),
    "xml empty ops": ("application/xml", b"<batch>", b"<op/>", b"", b"</batch>"),
    "xml elements in an op": ("application/xml", b'<batch><op type="get"><key>a</key>', b"<x/>",
                              b"", b"</op></batch>"),
    "xml deep nesting": ("application/xml", b"", b"<a>", b"", b""),
    "xml attributes": ("application/xml", b'<batch><op type="get"', b' a%06x="1"', b"",
                       b"/></batch>"),
}

def hostile_body(name) -> bytes:
    """HOSTILE[name], 16 MiB long."""
    _, head, unit, sep, tail = HOSTILE[name]
    n = (16 * MiB - len(head) - len(tail)) // (len(unit.replace(b"%06x", b"000000")) + len(sep))
    if b"%" in unit:                            # numbered: attribute names must differ
        return head + b"".join(unit % i for i in range(n)) + tail
    return b"".join([head, (unit + sep) * (n - 1), unit, tail])


# Reads a body from a file, parses it; prints peak RSS growth (MiB), seconds, outcome.
CHILD = textwrap.dedent("""
    import json, resource, sys, time
    sys.path.insert(0, sys.argv[1])
    from kv.http.bodies import parse_batch_body
    with open(sys.argv[3], "rb") as f:
        body = f.read()
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    started = time.perf_counter()
    try:
        parse_batch_body(sys.argv[2], body)
        outcome = "parsed"
    except Exception as e:
        outcome = "%s: %s" % (type(e).__name__, e)
    seconds = time.perf_counter() - started
    grown = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    print(json.dumps([len(body), grown, seconds, outcome]))
""")


def parse_in_child(name, directory):
    """(body bytes, peak RSS growth MiB, seconds, outcome) of parsing HOSTILE[name]."""
    path = os.path.join(directory, "body")
    with open(path, "wb") as f:
        f.write(hostile_body(name))
    done = subprocess.run([sys.executable, "-c", CHILD, ROOT, HOSTILE[name][0], path],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


class HostileBatchCostTest(unittest.TestCase):
    """Every hostile 16 MiB batch body is refused for less than 40 MiB and 2 s."""

    def test_hostile_batches_are_refused_cheaply(self):
        directory = tempfile.mkdtemp(prefix="kv-bodies-")
        self.addCleanup(shutil.rmtree, directory, True)
        report = []
        for name in HOSTILE:
            size, grown, seconds, outcome = parse_in_child(name, directory)
            report.append("%-24s %5.1f MiB body: +%4.0f MiB RSS, %.3f s, %s"
                          % (name, size / MiB, grown, seconds, outcome[:70]))
            with self.subTest(name):
                self.assertGreater(size, 15 * MiB)
                self.assertTrue(outcome.startswith("InvalidRequest: "), outcome)
                self.assertLess(grown, 40, outcome)      # the body is 16 MiB; its text 16 more
                self.assertLess(seconds, 2.0, outcome)
        print("\n  " + "\n  ".join(report), file=sys.stderr)


class BoundedParsingTest(unittest.TestCase):
    """Valid bodies parse the same on both JSON paths; the errors are clear."""

    def test_a_big_valid_batch_takes_the_counted_path_and_parses_the_same(self):
        ops = [{"op": "put", "key": "k%d" % i, "value": "{[,]}" * 40, "ttl": 60,
                "if_match": '"1-a"'} for i in range(1000)]
        body = json.dumps({"ops": ops}).encode()
        self.assertGreater(body.count(b",") + body.count(b"{"), 65536)
        parsed = parse_batch_body("application/json", body)
        self.assertEqual(len(parsed), 1000)
        self.assertEqual(parsed[999], {"op": "put", "bucket": b"default", "key": b"k999",
                                       "value": b"{[,]}" * 40, "ttl": 60, "if_match": ('"1-a"',)})

    def test_limits_are_named_in_the_errors(self):
        cases = [(b'{"ops":[' + b",".join([b'{"op":"get","key":"k"}'] * 1001) + b"]}",
                  "at most 1000 ops per batch"),
                 (b'{"ops":[' + b"[]," * 70000 + b"[]]}", "at most 1000 ops per batch"),
                 (b'{"ops":[{"op":"get","key":"k","v":[' + b"0," * 70000 + b"0]}]}",
                  "nests deeper than a batch can"),
                 (b'{"ops":[{"op":[],"key":"a"}]}', "op 0: unknown op []"),
                 (b'{"ops":[{"op":{"x":1},"key":"a"}]}', "op 0: unknown op {'x': 1}"),
                 (b'{"ops":[{"op":"' + b"x" * 1000 + b'","key":"a"}]}', "op 0: unknown op 'xxx"),
                 (b'{"ops":[], "' + b"y" * 1000 + b'": 1}', 'the body must be {"ops": [...]}')]
        for body, words in cases:
            with self.assertRaises(InvalidRequest) as caught:
                parse_batch_body("application/json", body)
            self.assertIn(words, str(caught.exception))
            self.assertLess(len(str(caught.exception)), 200)

    def test_xml_markup_limit_spares_long_values(self):
        value = "x&amp;<>" * 20000
        body = ('<batch><op type="put"><key>k</key><value>%s</value></op>'
                '<op type="put"><key>c</key><value><![CDATA[%s]]></value></op></batch>'
                % (value.replace("<>", "&lt;&gt;"), "y<" * 50000)).encode()
        ops = parse_batch_body("application/xml", body)
        self.assertEqual(ops[0]["value"], b"x&<>" * 20000)
        self.assertEqual(ops[1]["value"], b"y<" * 50000)
        long_comment = b"<batch><!--" + b"z" * 200000 + b"--></batch>"
        with self.assertRaises(InvalidRequest) as caught:
            parse_batch_body("application/xml", long_comment)
        self.assertIn("over 65536 bytes", str(caught.exception))

    def test_record_bodies_are_bounded_too(self):
        junk = b'{"value":"v","ttl":[' + b"[]," * 3000000 + b"[]]}"
        started = time.perf_counter()
        with self.assertRaises(InvalidRequest) as caught:
            parse_record_body("application/json", junk)
        self.assertIn("nests deeper than a record body can", str(caught.exception))
        self.assertLess(time.perf_counter() - started, 1.0)
        xml = b"<record><value>v</value>" + b"<ttl/>" * 1000000 + b"</record>"
        with self.assertRaises(InvalidRequest) as caught:
            parse_record_body("application/xml", xml)
        self.assertIn("at most 3 elements in <record>", str(caught.exception))
        self.assertEqual(parse_record_body(
            "application/json", b'{"key":"k","value":"dg==","encoding":"base64","ttl":5}'),
            {"key": "k", "value": b"v", "ttl": 5})


class HttpTest(unittest.TestCase):
    """POST /batch, PUT and GET /keys through the WSGI application (SQLite partitions)."""

    def setUp(self):
        self.dir = tempfile.mkdtemp(prefix="kv-bodies-")
        self.addCleanup(shutil.rmtree, self.dir, True)
        path = os.path.join(self.dir, "c.cfg")
        with open(path, "w") as f:
            f.write("[server]\nmax_value_bytes = 1048576\n\n[cluster]\npartitions = 3\n"
                    "replicas = 2\n\n")
            for i in (1, 2, 3):
                f.write("[partition-%d]\nengine = sqlite\npath = p%d.sqlite3\n\n" % (i, i))
        self.wsgi = controller.create_application(path)
        self.addCleanup(self.wsgi.store.close)
        self.app = paste.fixture.TestApp(self.wsgi)

    def req(self, method, path, body=b"", content_type=None, accept=None):
        headers = {"Content-Type": content_type} if content_type else {}
        if accept:
            headers["Accept"] = accept
        return self.app._gen_request(method, path, params=body, headers=headers, status="*",
                                     expect_errors=True)

    def test_junk_batches_are_400_and_apply_nothing(self):
        valid = b'{"op":"put","key":"a","value":"1"}'
        bodies = [b'{"ops":[' + valid + b"," + b"{}," * 300000 + b"{}]}",
                  b'{"ops":[' + valid + b',{"op":"get","key":"b","x":['
                  + b"[]," * 300000 + b"[]]}]}",
                  b'{"ops":[' + valid + b',{"op":[],"key":"b"}]}',
                  b'{"ops":[' + valid + b',{"op":{},"key":"b"}]}']
        for body in bodies:
            response = self.req("POST", "/batch", body, "application/json")
            self.assertEqual(response.status, 400, response.body[:300])
            error = json.loads(response.body)["error"]
            self.assertEqual(error["code"], "bad_request")
            self.assertLess(len(error["message"]), 200)
        xml = (b'<batch><op type="put"><key>a</key><value>1</value></op>' + b"<op/>" * 300000
               + b"</batch>")
        response = self.req("POST", "/batch", xml, "application/xml", "application/xml")
        self.assertEqual(response.status, 400)
        self.assertIn(b"at most 1000 ops per batch", response.body)
        self.assertEqual(json.loads(self.req("GET", "/keys").body)["items"], [])

    def test_listing_items_carry_expires(self):
        self.assertEqual(self.req("PUT", "/keys/a", b"1", "text/plain").status, 201)
        self.assertEqual(self.req("PUT", "/keys/b?ttl=60", b"2", "text/plain").status, 201)
        expires = json.loads(self.req("GET", "/keys/b").body)["expires"]
        self.assertTrue(expires.endswith("Z"))
        for query in ("", "?values=true"):
            items = json.loads(self.req("GET", "/keys" + query).body)["items"]
            self.assertEqual([(i["key"], i["expires"]) for i in items],
                             [("a", None), ("b", expires)])
        for query in ("?format=xml", "?format=xml&values=true"):
            root = ElementTree.fromstring(self.req("GET", "/keys" + query).body)
            found = [(i.find("key").text, i.find("expires").text) for i in root.findall("item")]
            self.assertEqual(found, [("a", None), ("b", expires)])


if __name__ == "__main__":
    unittest.main()
