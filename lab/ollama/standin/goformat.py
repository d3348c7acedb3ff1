"""Go-compatible formatting helpers: what Go's standard library and Ollama's format
package write, so the stand-in's answers and logs read as upstream's.

time.ParseDuration and Duration.String, time.Time's JSON form (RFC 3339), encoding/json's
compact, HTML-escaped output and its error texts, format.HumanBytes, HumanBytes2 and
HumanTime.
"""

from __future__ import annotations

import datetime
import json
import math
import re
import time

FOREVER_NS = (1 << 63) - 1
_DUR_UNITS = {
    "ns": 1, "us": 1_000, "\u00b5s": 1_000, "\u03bcs": 1_000, "ms": 1_000_000,
    "s": 1_000_000_000, "m": 60_000_000_000, "h": 3_600_000_000_000,
}
_DUR_RE = re.compile(r"(\d*)(?:\.(\d*))?([^\d.]*)")


class DurationError(ValueError):
    pass


def parse_go_duration(orig: str) -> int:
    """time.ParseDuration, in nanoseconds."""
    s = orig
    neg = False
    if s and s[0] in "+-":
        neg = s[0] == "-"
        s = s[1:]
    if s == "0":
        return 0
    if not s:
        raise DurationError(f'time: invalid duration "{orig}"')
    total = 0.0
    while s:
        m = _DUR_RE.match(s)
        if not m or (not m.group(1) and not m.group(2)):
            raise DurationError(f'time: invalid duration "{orig}"')
        unit = m.group(3)
        if not unit:
            raise DurationError(f'time: missing unit in duration "{orig}"')
        if unit not in _DUR_UNITS:
            raise DurationError(f'time: unknown unit "{unit}" in duration "{orig}"')
        num = float((m.group(1) or "0") + "." + (m.group(2) or "0"))
        total += num * _DUR_UNITS[unit]
        s = s[m.end():]
    ns = int(total)
    return -ns if neg else ns


def go_duration_str(ns: int) -> str:
    """time.Duration.String (approximately, enough for logs)."""
    if ns == 0:
        return "0s"
    sign = "-" if ns < 0 else ""
    ns = abs(ns)
    if ns < 1_000:
        return f"{sign}{ns}ns"
    if ns < 1_000_000:
        return f"{sign}{_trim_float(ns / 1e3)}\u00b5s"
    if ns < 1_000_000_000:
        return f"{sign}{_trim_float(ns / 1e6)}ms"
    secs = ns / 1e9
    h, rem = divmod(secs, 3600)
    m, s = divmod(rem, 60)
    out = sign
    if h:
        out += f"{int(h)}h"
    if h or m:
        out += f"{int(m)}m"
    return out + f"{_trim_float(s)}s"


def _trim_float(v: float) -> str:
    s = f"{v:.9f}".rstrip("0").rstrip(".")
    return s or "0"


def go_time(ts_ns: int, utc: bool = False) -> str:
    """time.Time JSON form (RFC3339Nano)."""
    sec, frac_ns = divmod(ts_ns, 1_000_000_000)
    try:
        if utc:
            dt = datetime.datetime.fromtimestamp(sec, tz=datetime.timezone.utc)
        else:
            dt = datetime.datetime.fromtimestamp(sec).astimezone()
    except (OverflowError, OSError, ValueError):
        dt = datetime.datetime(9999, 12, 31, 23, 59, 59, tzinfo=datetime.timezone.utc)
    frac = f".{frac_ns:09d}".rstrip("0") if frac_ns else ""
    return dt.strftime("%Y-%m-%dT%H:%M:%S") + frac + _tz_suffix(dt)


def _tz_suffix(dt: datetime.datetime) -> str:
    off = dt.utcoffset() or datetime.timedelta(0)
    total = int(off.total_seconds())
    if total == 0:
        return "Z"
    sign = "+" if total > 0 else "-"
    total = abs(total)
    return f"{sign}{total // 3600:02d}:{total % 3600 // 60:02d}"


def go_json(obj) -> bytes:
    """encoding/json output: compact, HTML characters escaped."""
    s = json.dumps(obj, separators=(",", ":"), ensure_ascii=False)
    s = (s.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")
         .replace("\u2028", "\\u2028").replace("\u2029", "\\u2029"))
    return s.encode("utf-8")


def go_json_decode_error(raw: bytes, err: ValueError) -> str:
    """Approximate encoding/json syntax error text."""
    text = raw.decode("utf-8", "replace")
    pos = getattr(err, "pos", None)
    if pos is None or pos >= len(text.rstrip()):
        return "unexpected EOF"
    ch = text[pos]
    msg = getattr(err, "msg", "")
    if msg.startswith("Expecting property name"):
        return f"invalid character '{ch}' looking for beginning of object key string"
    if msg.startswith("Expecting ':'"):
        return f"invalid character '{ch}' after object key"
    if msg.startswith("Expecting ',' delimiter"):
        return f"invalid character '{ch}' after object key:value pair"
    if msg.startswith("Extra data"):
        return f"invalid character '{ch}' after top-level value"
    return f"invalid character '{ch}' looking for beginning of value"


def _json_kind(v) -> str:
    if isinstance(v, bool):
        return "bool"
    if isinstance(v, (int, float)):
        return "number"
    if isinstance(v, str):
        return "string"
    if isinstance(v, list):
        return "array"
    return "object"


def human_bytes(b: int) -> str:
    """format.HumanBytes."""
    value, unit = float(b), ""
    for limit, name in ((10**12, "TB"), (10**9, "GB"), (10**6, "MB"), (10**3, "KB")):
        if b >= limit:
            value, unit = b / limit, name
            break
    if not unit:
        return f"{b} B"
    if value >= 10 or value == math.trunc(value):
        return f"{int(value)} {unit}"
    return f"{value:.1f} {unit}"


def human_bytes2(b: int) -> str:
    """format.HumanBytes2."""
    for limit, unit in ((1024**3, "GiB"), (1024**2, "MiB"), (1024, "KiB")):
        if b >= limit:
            return f"{b / limit:.1f} {unit}"
    return f"{b} B"


def _human_duration(secs: float) -> str:
    seconds = int(secs)
    if seconds < 1:
        return "Less than a second"
    if seconds == 1:
        return "1 second"
    if seconds < 60:
        return f"{seconds} seconds"
    minutes = int(secs / 60)
    if minutes == 1:
        return "About a minute"
    if minutes < 60:
        return f"{minutes} minutes"
    hours = int(round(secs / 3600))
    if hours == 1:
        return "About an hour"
    if hours < 48:
        return f"{hours} hours"
    if hours < 24 * 7 * 2:
        return f"{hours // 24} days"
    if hours < 24 * 30 * 2:
        return f"{hours // 24 // 7} weeks"
    if hours < 24 * 365 * 2:
        return f"{hours // 24 // 30} months"
    return f"{int(secs / 3600 / 24 / 365)} years"


def human_time(ts: float | None, zero: str) -> str:
    """format.HumanTime."""
    if ts is None:
        return zero
    delta = time.time() - ts
    if delta / 86400 / 365 < -20:
        return "Forever"
    if delta < 0:
        return _human_duration(-delta) + " from now"
    return _human_duration(delta) + " ago"


def parse_rfc3339(s: str) -> float | None:
    if not s:
        return None
    m = re.match(r"^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(?:\.(\d+))?(Z|[+-]\d\d:\d\d)$", s)
    if not m:
        return None
    tz = "+00:00" if m.group(3) == "Z" else m.group(3)
    try:
        dt = datetime.datetime.fromisoformat(m.group(1) + tz)
    except ValueError:
        return None
    return dt.timestamp() + float("0." + (m.group(2) or "0"))
