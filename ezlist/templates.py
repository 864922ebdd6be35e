"""Message templates in ``lists/NAME/text/`` with ezmlm-style tags.

What it does: ``render`` reads ``text/NAME`` of a list folder (falling back to
the built-in text of ``ezlist._texts``), keeps or drops ``<=flags=>`` sections,
then replaces ``<#X#>`` tags (one letter or digit) with the given values.
``L`` and ``H`` default to the list's ``outlocal`` / ``outhost``; a tag with no
value becomes the empty string (owners edit these files, and a stray tag must
not stop mail). Sections (ezmlm-idx): a line ``<=ms=>`` keeps the following
lines only when flags ``m`` and ``s`` are on (an upper-case letter: only when
off); ``<==>`` returns to unconditional text. Flags come from the list options
(ListConfig.flags) unless ``flags=`` is given.

Public functions:
    render(list_dir, name, flags=None, **tags) -> str
    write_defaults(text_dir)          copy every built-in template into a folder
    TEMPLATE_NAMES                    the names of the built-in templates

Failures: ``KeyError`` for a template name that is neither in the folder nor
built in (a programming error); ``OSError`` reading the folder propagates.
A template that is not UTF-8 is read with replacement characters.
"""

from __future__ import annotations

import re
from pathlib import Path

from ezlist._fsutil import write_atomic
from ezlist._texts import DEFAULTS

TEMPLATE_NAMES = tuple(sorted(DEFAULTS))
_TAG = re.compile(r"<#([A-Za-z0-9])#>")
_SECTION = re.compile(r"<=([A-Za-z]*)=>")
_SAFE_NAME = re.compile(r"[a-z][a-z0-9-]{0,40}")


def write_defaults(text_dir: Path) -> None:
    """Write every built-in template into ``text_dir`` (which must exist)."""
    for name, text in DEFAULTS.items():
        write_atomic(Path(text_dir) / name, text.encode("utf-8"))


def _read_template(list_dir: Path, name: str) -> str:
    if not _SAFE_NAME.fullmatch(name):
        raise KeyError(f"bad template name {name!r}")
    file = Path(list_dir) / "text" / name
    if file.exists():
        return file.read_text("utf-8", errors="replace")
    return DEFAULTS[name]


def _list_flags(list_dir: Path) -> str:
    from ezlist.listdir import load_list_dir  # listdir imports this module

    return load_list_dir(list_dir).flags


def _keep_sections(text: str, flags: str) -> str:
    out, keep = [], True
    for line in text.splitlines(keepends=True):
        match = _SECTION.fullmatch(line.rstrip("\r\n"))
        if match is None:
            if keep:
                out.append(line)
            continue
        wanted = match.group(1)
        keep = all((c in flags) if c.islower() else (c.lower() not in flags) for c in wanted)
    return "".join(out)


def _identity(list_dir: Path) -> dict[str, str]:
    values = {}
    for tag, filename in (("L", "outlocal"), ("H", "outhost")):
        file = Path(list_dir) / filename
        if file.exists():
            values[tag] = file.read_text("ascii", errors="replace").strip()
    return values


def render(list_dir: Path, name: str, flags: str | None = None, **tags: object) -> str:
    """Render template ``name`` of the list in ``list_dir``."""
    text = _read_template(list_dir, name)
    if "<=" in text:
        text = _keep_sections(text, _list_flags(list_dir) if flags is None else flags)
    values = _identity(list_dir)
    values.update({k: str(v) for k, v in tags.items()})
    return _TAG.sub(lambda m: values.get(m.group(1), ""), text)
