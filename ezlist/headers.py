"""Edit a message header as raw bytes, leaving everything else byte-exact.

What it does: a message is split at its first empty line into header and body;
the header into fields, each field the exact bytes of its first line plus its
continuation lines (line endings included). Edits remove fields, prepend new
ones or rewrite one field; the body, every untouched field (DKIM-Signature,
MIME headers) and their order survive byte for byte, because nothing is
re-serialized through ``email.*``. New lines use the line ending the message
already uses (CRLF or LF).

Public functions:
    split_message(raw) -> (header, separator, body)
    parse_fields(header) -> list[bytes];  join_fields(fields, eol) -> bytes
    field_name(field) -> bytes (lower case, b"" for a malformed line)
    field_value(field) -> bytes (unfolded, stripped)
    values_of(fields, name) -> list[bytes]
    remove_fields(fields, names) -> list[bytes]
    make_field(name, value, eol) -> bytes
    line_ending(raw) -> b"\\r\\n" | b"\\n"

Failures: parsing never raises: a header line that is neither ``name:`` nor a
continuation is kept as its own field with name b"". ``make_field`` raises
ValueError for CR, LF or NUL in a value (header injection).
"""

from __future__ import annotations

import re

_FOLD = re.compile(rb"\r?\n(?=[ \t])")
_NAME = re.compile(rb"([!-9;-~]+)[ \t]*:")


def line_ending(raw: bytes) -> bytes:
    """The line ending of the first line: CRLF or LF (LF when there is none)."""
    newline = raw.find(b"\n")
    return b"\r\n" if newline > 0 and raw[newline - 1 : newline] == b"\r" else b"\n"


def split_message(raw: bytes) -> tuple[bytes, bytes, bytes]:
    """(header, separator, body): the separator is the empty line, or b"" if none."""
    pos = 0
    while pos < len(raw):
        end = raw.find(b"\n", pos)
        if end < 0:
            break
        line = raw[pos : end + 1]
        if line in (b"\n", b"\r\n"):
            return raw[:pos], line, raw[end + 1 :]
        pos = end + 1
    return raw, b"", b""


def parse_fields(header: bytes) -> list[bytes]:
    """Split a header into fields, keeping folded lines with their field."""
    fields: list[bytes] = []
    for line in header.splitlines(keepends=True):
        if line[:1] in (b" ", b"\t") and fields:
            fields[-1] += line
        else:
            fields.append(line)
    return fields


def join_fields(fields: list[bytes], eol: bytes) -> bytes:
    """Concatenate fields, ending a last field that lacked a line ending."""
    return b"".join(f if f.endswith(b"\n") else f + eol for f in fields)


def field_name(field: bytes) -> bytes:
    match = _NAME.match(field)
    return match.group(1).lower() if match else b""


def field_value(field: bytes) -> bytes:
    """The value of a field, unfolded (RFC 5322 section 2.2.3) and stripped."""
    match = _NAME.match(field)
    if match is None:
        return b""
    return _FOLD.sub(b"", field[match.end() :]).strip()


def values_of(fields: list[bytes], name: bytes) -> list[bytes]:
    name = name.lower()
    return [field_value(f) for f in fields if field_name(f) == name]


def remove_fields(fields: list[bytes], names: set[bytes] | frozenset[bytes]) -> list[bytes]:
    return [f for f in fields if field_name(f) not in names]


def make_field(name: str, value: str, eol: bytes) -> bytes:
    """``Name: value`` + eol; refuses CR, LF and NUL anywhere (header injection)."""
    text = f"{name}: {value}"
    if any(c in text for c in "\r\n\0"):
        raise ValueError(f"line break or NUL in header {name!r}")
    return text.encode("utf-8") + eol
