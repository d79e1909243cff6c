"""This module provides the input formats of ``kv load`` and ``kv restore``:
TSV files (:func:`read_tsv`, whose fields become a JSON object by
:func:`json_field`), ``kv dump``'s JSON lines (:func:`read_jsonl`), and the
TTL a dumped expiry leaves (:func:`ttl_of`).

What a TSV field becomes is :data:`TSV_HELP` (``kv load --help`` shows it):
the exact text, unless the text is a JSON number in canonical form (one a
JSON reader turns back into the same text), so the text can always be
rebuilt exactly from the value.  The integer bound is 2^53 - 1
(``Number.MAX_SAFE_INTEGER``, ECMA-262 21.1.2.6): larger integers are not
exact as a double, which is how JavaScript and many JSON readers hold
numbers.  A decimal qualifies when Python's shortest form of its double
(``repr``, the same digits as JavaScript's Number::toString) is the text.
"""

import csv
import json
import math
import re
import sys
from typing import Iterator, Optional, Tuple, Union

from kvclient.records import decode_value, parse_time

__all__ = ["json_field", "read_tsv", "read_jsonl", "jsonl_rows", "ttl_of", "TSV_HELP"]

TSV_HELP = """\
TSV: a header line names the columns; the first column is the key, the
value is a JSON object of the other columns.  A field stays its exact text
(a JSON string) unless it is a JSON number in canonical form that reads back
as the same text: an integer of ASCII digits with no leading zero and at
most 2^53-1 in magnitude (0, 7, -12), or a decimal with no trailing zero
and no exponent that a double holds exactly (1.5, -0.25).  So "007", "+7",
"-0", "1.50", "1e5", "\u00b2" and 9007199254740993 stay text.  With --text
every field stays text.  A line with more or fewer fields than the header
stops the load, naming the line."""

MAX_EXACT_INTEGER = 2 ** 53 - 1          # Number.MAX_SAFE_INTEGER (ECMA-262 21.1.2.6)
_INTEGER = re.compile(r"-?(?:0|[1-9][0-9]*)\Z")
_DECIMAL = re.compile(r"-?(?:0|[1-9][0-9]*)\.[0-9]*[1-9]\Z")


def json_field(text: str) -> Union[str, int, float]:
    """A TSV field as a JSON value: an int or float when ``text`` is a JSON
    number in canonical form (the module docstring's rule), else ``text``."""
    if _INTEGER.match(text):
        number = int(text)
        if text != "-0" and abs(number) <= MAX_EXACT_INTEGER:
            return number
    elif _DECIMAL.match(text) and len(text) <= 32:
        number = float(text)
        if repr(number) == text:
            return number
    return text


def read_tsv(path: str, numbers: bool = True) -> Iterator[Tuple[str, bytes]]:
    """(key, value bytes) of a TSV file with a header line: the first column
    is the key, the value is the JSON object (UTF-8, keys sorted) of the other
    columns, each field as :func:`json_field` makes it (or its text when
    ``numbers`` is False).  Fields are split on tabs only: quotes are data.
    A UTF-8 byte order mark before the header is dropped.

    :raises SystemExit: (naming the line) when a line has more or fewer
        fields than the header, so that no field is silently dropped.
    :raises UnicodeDecodeError: when the file is not UTF-8.
    """
    csv.field_size_limit(1 << 24)
    convert = json_field if numbers else str
    with open(path, encoding="utf-8-sig", newline="") as f:
        reader = csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE)
        header = next(reader, None)
        if not header:
            return
        for row in reader:
            if not row:
                continue                      # a blank line
            if len(row) != len(header):
                raise SystemExit("kv: %s line %d has %d fields, the header has %d"
                                 % (path, reader.line_num, len(row), len(header)))
            fields = {name: convert(v) for name, v in zip(header[1:], row[1:])}
            yield row[0], json.dumps(fields, ensure_ascii=False, sort_keys=True).encode("utf-8")


def read_jsonl(stream) -> Iterator[Tuple[str, bytes, Optional[float]]]:
    """(key, value bytes, expires) of ``kv dump`` lines; ``expires`` is the
    expiry in seconds since the epoch (a float), or None for no expiry.

    :raises SystemExit: (naming the line) for a line that is not a dump record.
    """
    for number, line in enumerate(stream, 1):
        if not line.strip():
            continue
        try:
            doc = json.loads(line)
            expires = parse_time(doc["expires"]).timestamp() if doc.get("expires") else None
            yield doc["key"], decode_value(doc), expires
        except (ValueError, KeyError, TypeError, AttributeError) as e:
            raise SystemExit("kv: line %d is not a dump record: %s" % (number, e))


def jsonl_rows(path: str) -> list:
    """The rows of :func:`read_jsonl` from a file, or stdin for ``-``."""
    if path == "-":
        return list(read_jsonl(sys.stdin))
    with open(path, encoding="utf-8") as f:
        return list(read_jsonl(f))


def ttl_of(expires: Optional[float], now: float) -> Optional[int]:
    """The TTL to send for a row expiring at ``expires`` (seconds since the
    epoch, or None): the remaining seconds rounded up, so a restored key
    expires no earlier than the dumped one (and less than 1 s later, plus the
    request's latency and the clock difference between this host and the
    servers).  None for no expiry; 0 when the row has expired by ``now``."""
    if expires is None:
        return None
    return max(0, math.ceil(expires - now))
