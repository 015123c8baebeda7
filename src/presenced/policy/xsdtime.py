"""xs:dateTime → Unix seconds, for the RFC 4745 §7.4 `<validity>` condition.

RFC 4745 erratum 1455 (verified) makes the timezone mandatory, so a value
without `Z` or `±hh:mm` is rejected rather than guessed. The conversion is
plain calendar arithmetic (proleptic Gregorian, astronomical year numbering
as in XML Schema 1.1), so any year the lexical form allows works, not just
the 1..9999 range of `datetime`.
"""

from __future__ import annotations

import re

__all__ = ["parse_xs_datetime"]

_DATETIME = re.compile(
    r"(-?)(\d{4,9})-(\d{2})-(\d{2})T(\d{2}):(\d{2}):(\d{2})(\.\d+)?"
    r"(?:(Z)|([+-])(\d{2}):(\d{2}))?",
    re.ASCII,
)

_MONTH_DAYS = (31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31)


def _is_leap(year: int) -> bool:
    return year % 4 == 0 and (year % 100 != 0 or year % 400 == 0)


def _days_since_epoch(year: int, month: int, day: int) -> int:
    """Days from 1970-01-01 to the given proleptic Gregorian date."""
    # Count in 400-year eras starting on 1 March, so the leap day is the last
    # day of the shifted year and needs no special case.
    shifted = year - 1 if month <= 2 else year
    era = shifted // 400
    year_of_era = shifted - era * 400
    month_index = month - 3 if month > 2 else month + 9
    day_of_year = (153 * month_index + 2) // 5 + day - 1
    day_of_era = year_of_era * 365 + year_of_era // 4 - year_of_era // 100 + day_of_year
    return era * 146097 + day_of_era - 719468


def parse_xs_datetime(text: str) -> float:
    """Seconds since the Unix epoch for an xs:dateTime with a timezone.

    Raises ValueError with a short reason on anything else. `24:00:00` (end
    of day, XML Schema 1.0) is accepted and means the next day's midnight.
    """
    value = text.strip()
    match = _DATETIME.fullmatch(value)
    if match is None:
        raise ValueError(f"not an xs:dateTime: {value[:40]!r}")
    sign, year_s, month_s, day_s, hour_s, minute_s, second_s, frac_s, zulu, tz_sign, tz_h, tz_m = match.groups()
    if zulu is None and tz_sign is None:
        raise ValueError(f"dateTime without timezone: {value[:40]!r}")
    if len(year_s) > 4 and year_s[0] == "0":
        raise ValueError(f"year with a leading zero: {value[:40]!r}")
    year = -int(year_s) if sign else int(year_s)
    month, day = int(month_s), int(day_s)
    hour, minute, second = int(hour_s), int(minute_s), int(second_s)
    fraction = float(frac_s) if frac_s else 0.0
    if not 1 <= month <= 12:
        raise ValueError(f"month out of range: {value[:40]!r}")
    days_in_month = 29 if month == 2 and _is_leap(year) else _MONTH_DAYS[month - 1]
    if not 1 <= day <= days_in_month:
        raise ValueError(f"day out of range: {value[:40]!r}")
    if hour == 24:
        if minute or second or fraction:
            raise ValueError(f"24:00:00 is the only time allowed with hour 24: {value[:40]!r}")
    elif hour > 23:
        raise ValueError(f"hour out of range: {value[:40]!r}")
    if minute > 59 or second > 59:
        raise ValueError(f"minute/second out of range: {value[:40]!r}")
    offset = 0
    if tz_sign is not None:
        oh, om = int(tz_h), int(tz_m)
        if om > 59 or oh > 14 or (oh == 14 and om != 0):
            raise ValueError(f"timezone offset out of range: {value[:40]!r}")
        offset = (oh * 60 + om) * 60
        if tz_sign == "-":
            offset = -offset
    seconds = _days_since_epoch(year, month, day) * 86400 + hour * 3600 + minute * 60 + second - offset
    return seconds + fraction
