"""Process set-up shared by ``iceward serve`` and its worker processes: event loop and logging.

A leaf (standard library only; uvloop when installed).

Logging has two formats. ``text`` (the default) is one human line a record. ``json`` is one JSON
object a line with stable field names (a contract for log pipelines, like the findings codes: add
fields, never rename): ``ts``, ``level``, ``logger``, ``event``, ``message``, and the fields of
:data:`FIELDS` a record carries (passed as ``extra``). Only those names are ever written, so a
value passed under any other name (a password, a key) never reaches the log.
"""

from __future__ import annotations

import asyncio
import json
import logging
import sys
import time
from typing import Any

LOG_FORMATS = ("text", "json")
#: Whether this process writes records' fields (the json format): the text format shows only
#: the message, so a caller on a hot path can skip building them (:func:`fields_written`).
_fields_written = False

#: What a JSON line may carry beside ts, level, logger, event and message, in this order.
FIELDS = (
    "worker",
    "allocation",
    "user",
    "account",
    "client",
    "transport",
    "relayed",
    "peer",
    "reason",
    "duration_s",
    "bytes_to_peer",
    "bytes_to_client",
    "packets_to_peer",
    "packets_to_client",
    "suppressed",
    "dropped",
)


def use_uvloop() -> None:
    """Make asyncio run on uvloop when it is installed (the default loop otherwise)."""
    try:
        import uvloop

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    except ImportError:
        pass


def _plain(value: Any) -> Any:
    """A field value as JSON: an address ``(host, port)`` is ``host:port`` (``[host]:port``
    for IPv6), a list of them a list of strings."""
    if isinstance(value, tuple) and len(value) >= 2 and isinstance(value[1], int):
        host = str(value[0])
        return f"[{host}]:{value[1]}" if ":" in host else f"{host}:{value[1]}"
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return str(value)


class TextFormatter(logging.Formatter):
    """logging's own text format, the date of a second formatted once (not once a line)."""

    def __init__(self, fmt: str) -> None:
        super().__init__(fmt)
        self._second = -1
        self._date = ""

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        second = int(record.created)
        if second != self._second:
            self._date = time.strftime(self.default_time_format, self.converter(second))
            self._second = second
        return f"{self._date},{int(record.msecs):03d}"


class JsonFormatter(logging.Formatter):
    """One JSON object a line (see the module's docstring for the fields)."""

    def __init__(self, worker: int | None = None) -> None:
        super().__init__()
        self.worker = worker

    def format(self, record: logging.LogRecord) -> str:
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
        line: dict[str, Any] = {
            "ts": f"{stamp}.{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "event": str(getattr(record, "event", "log")),
            "message": record.getMessage(),
        }
        if self.worker is not None:
            line["worker"] = self.worker
        for name in FIELDS:
            if name in record.__dict__ and name != "worker":
                line[name] = _plain(record.__dict__[name])
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return json.dumps(line, separators=(",", ":"))


def fields_written() -> bool:
    """True when log records' ``extra`` fields reach the log (the json format)."""
    return _fields_written


def setup_logging(level: str, worker: int | None = None, log_format: str = "text") -> None:
    """Log to stderr at ``level`` (a name; INFO if unknown), in ``log_format`` (text or json).

    A worker process tags every logger name ``[wN]`` (text) or writes ``"worker": N`` (json)
    and replaces any handler already set up.
    """
    numeric = getattr(logging, level.upper(), logging.INFO)
    # Neither format shows where a call was made, nor the thread or process (logging HOWTO,
    # "Optimization"): finding the caller's frame and those ids cost half of each record.
    logging._srcfile = None
    logging.logThreads = logging.logProcesses = logging.logMultiprocessing = False
    global _fields_written
    _fields_written = log_format == "json"
    if log_format == "json":
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(JsonFormatter(worker))
        logging.basicConfig(level=numeric, handlers=[handler], force=True)
        return
    tag = "" if worker is None else f"[w{worker}]"
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(TextFormatter(f"%(asctime)s %(levelname)s %(name)s{tag} %(message)s"))
    logging.basicConfig(level=numeric, handlers=[handler], force=worker is not None)
