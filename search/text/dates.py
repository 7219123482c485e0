"""Reading publication dates: one parser for the indexer (indexer/sources.py) and the write API (search/intake.py).

A corpus and an API client must be held to the same rules, or an article the indexer accepts is refused by the API
(or, worse, stored without its date) when it arrives the other way. Read, in this order:

- ISO 8601 / RFC 3339: ``2005-01-08``, ``2005-01-08T10:00:00Z``, ``2005-01-08 10:00:00+01:00``;
- RFC 822 / 2822, the date of every RSS feed and e-mail: ``Sat, 08 Jan 2005 10:00:00 GMT``;
- Reuters-21578's ``08-JAN-2005 10:00:00.00``, and ``2005/01/08``;
- dates with the month in words, day first or month first: ``8 Jan 2005``, ``8th January 2005``,
  ``January 8, 2005``, ``Saturday, 8 January 2005 10:00``;
- numeric day/month/year: ``08/01/2005``, ``8.1.2005``, ``08-01-2005``.

Numeric day/month/year is read **day first**, always: ``01/02/2005`` is 1 February 2005. That is how most of the
world (and this indexer, before this module) writes it; a file of US month-first dates then shows its problem in
the summary (``12/25/2005`` cannot be read) instead of being half misread, which mixing the two orders would do.
A value without a day, month or year (``January 2005``, ``8 Jan``) is not a date: nothing is made up to fill it.
Anything else is unreadable; the caller reports it (the indexer's summary, the API's 400).
"""

from __future__ import annotations

import contextlib
import re
import warnings
from datetime import date, datetime
from email.utils import parsedate_to_datetime

from search.errors import InvalidInput

ACCEPTED = "ISO 8601/RFC 3339 (2005-01-08, 2005-01-08T10:00:00Z), RFC 822 (Sat, 08 Jan 2005 10:00:00 GMT), "
ACCEPTED += "8 Jan 2005, January 8, 2005, or day-first 08/01/2005"

_ISO_DAY = re.compile(r"\d{4}-\d{2}-\d{2}", re.ASCII)  # ASCII: \d would take other scripts' digits too
_NUMERIC_DMY = re.compile(r"(\d{1,2})[/.\-](\d{1,2})[/.\-](\d{4})", re.ASCII)
_YMD_SLASH = re.compile(r"(\d{4})/(\d{1,2})/(\d{1,2})", re.ASCII)
_REUTERS = ("%d-%b-%Y %H:%M:%S.%f", "%d-%b-%Y %H:%M:%S")
_MONTH_WORD = re.compile(
    r"\b(jan|feb|mar|apr|may|jun|jul|aug|sep|sept|oct|nov|dec)[a-z]*\b\.?", re.IGNORECASE
)  # dateutil is asked only when a month name is present: alone it reads "10" or "2005" as dates
# RFC 822/2822: an optional weekday, day, month abbreviation, year, then a time (and usually a zone)
_RFC822 = re.compile(r"(?:[A-Za-z]{3},\s*)?\d{1,2}\s+[A-Za-z]{3}\s+\d{2,4}\s+\d{1,2}:\d{2}", re.ASCII)
# Two defaults that differ in every field: a field dateutil took from a default differs between the two readings.
_DEFAULT_A = datetime(1904, 1, 1, 0, 0, 0)
_DEFAULT_B = datetime(1905, 2, 2, 1, 1, 1)


def parse_date(value: str) -> str | None:
    """``value`` as an ISO 8601 date (``2005-01-08``) or datetime (``2005-01-08T10:00:00+00:00``), or None when it
    is not a date in one of the accepted forms (see the module docstring). A value with a time keeps it (and its
    offset); one without stays a plain date."""
    text = " ".join(value.split())
    if not text:
        return None
    try:
        if _ISO_DAY.fullmatch(text):
            return date.fromisoformat(text).isoformat()
        if text[:4].isascii() and text[:4].isdigit() and len(text) > 10 and text[4] == "-":
            with contextlib.suppress(ValueError):
                return datetime.fromisoformat(text.replace("Z", "+00:00").replace("z", "+00:00")).isoformat()
        if m := _YMD_SLASH.fullmatch(text):
            return date(int(m[1]), int(m[2]), int(m[3])).isoformat()
        if m := _NUMERIC_DMY.fullmatch(text):
            return date(int(m[3]), int(m[2]), int(m[1])).isoformat()  # day first: see the module docstring
    except ValueError:  # a day, month or time out of range
        return None
    for fmt in _REUTERS:
        with contextlib.suppress(ValueError):
            return datetime.strptime(text, fmt).isoformat()
    if _RFC822.match(text):
        rfc = _rfc822(text)
        if rfc is not None:
            return rfc
    if _MONTH_WORD.search(text) and re.search(r"\b\d{4}\b", text, re.ASCII):
        return _in_words(text)
    return None


def _rfc822(text: str) -> str | None:
    try:
        parsed = parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError):
        return None
    return str(parsed.isoformat())


def _in_words(text: str) -> str | None:
    """A date with its month in words, through dateutil; None unless day, month and year are all in ``text``."""
    from dateutil import parser

    readings: list[datetime] = []
    for default in (_DEFAULT_A, _DEFAULT_B):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # UnknownTimezoneWarning: an unknown zone name is dropped
                reading: datetime = parser.parse(text, default=default, dayfirst=True)
            readings.append(reading)
        except (ValueError, OverflowError, parser.ParserError):
            return None
    a, b = readings
    if (a.year, a.month, a.day) != (b.year, b.month, b.day):
        return None  # the day, month or year came from a default
    if (a.hour, a.minute) != (b.hour, b.minute):
        return a.date().isoformat()  # no time given (seconds alone may be missing: they are 0 then, as in "10:00")
    return a.isoformat()


_DURATION = re.compile(r"(\d+(?:\.\d+)?)\s*([smhd]?)", re.ASCII)
_UNIT_SECONDS = {"": 1.0, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


def parse_duration(text: str, name: str) -> float:
    """A positive duration in seconds from ``30``, ``30s``, ``5m``, ``2h`` or ``7d`` (``newsdesk watch --every``, the
    ``recency`` half-life); ``InvalidInput`` naming ``name`` otherwise."""
    found = _DURATION.fullmatch(text.strip().lower())
    seconds = float(found.group(1)) * _UNIT_SECONDS[found.group(2)] if found else 0.0
    if not seconds > 0:
        raise InvalidInput(f"{name} takes a positive duration such as 30s, 5m, 2h or 7d, got {text!r}")
    return seconds
