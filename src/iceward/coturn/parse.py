"""coturn's config syntax, as ``turnserver`` itself reads it (``read_config_file`` and
``parse_arg_string`` in coturn's ``mainrelay.c``):

- a line whose first non-blank character is ``#`` is a comment; nothing else is (``x=1 # y``
  gives ``x`` the value ``1 # y``, as in coturn);
- the name ends at the first space, tab or ``=``; any run of those follows; the rest of the line
  (trailing blanks stripped) is the value, and a value in double quotes loses them;
- a bare name is a flag (its value is ""); flags also take coturn's booleans (``no-tls=off``);
- a name may repeat (``listening-ip``, ``user``, ``denied-peer-ip``, ...).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

_SEPARATORS = " \t="


class ImportFailure(ValueError):
    """A config that cannot be translated: the file, the line (0: the file as a whole) and why."""

    def __init__(self, path: Path, line: int, message: str) -> None:
        self.path, self.line, self.message = path, line, message
        where = f"{path}:{line}" if line else str(path)
        super().__init__(f"{where}: {message}")


@dataclass(frozen=True, slots=True)
class Entry:
    """One option line: its name, its value ("" for a bare flag) and its line number."""

    name: str
    value: str
    line: int

    def __str__(self) -> str:
        return f"{self.name}={self.value}" if self.value else self.name


def parse(text: str, path: Path) -> list[Entry]:
    """The option lines of a coturn config, in order."""
    entries = []
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.lstrip(" \t").rstrip()
        if not line or line.startswith("#"):
            continue
        cut = next((i for i, ch in enumerate(line) if ch in _SEPARATORS), len(line))
        name, value = line[:cut], line[cut:].lstrip(_SEPARATORS)
        if value.startswith('"'):
            value = value[1:]
            if value.endswith('"'):
                value = value[:-1]
        entries.append(Entry(name, value, number))
    return entries


def read(path: Path) -> list[Entry]:
    """:func:`parse` of a file; :class:`ImportFailure` when it cannot be read."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ImportFailure(path, 0, f"cannot read it: {exc.strerror or exc}") from None
    try:
        text = data.decode()
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise ImportFailure(path, line, "not UTF-8 text") from None
    return parse(text, path)


def boolean(entry: Entry) -> bool | None:
    """coturn's ``get_bool_value``: "" and yes/true/on/1-9 are true, no/false/off/0 false;
    anything else None (coturn stops on it)."""
    value = entry.value
    if not value:
        return True
    if value[0] in "0nNfF" or value in ("off", "OFF", "Off"):
        return False
    if value[0] in "yYtT123456789" or value in ("on", "ON", "On"):
        return True
    return None
