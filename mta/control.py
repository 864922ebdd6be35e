"""Control files: qmail-control(5) settings, read from ``ROOT/control/``.

Every setting is declared once in ``SETTINGS`` with its file name, kind, default,
unit and a one-line description (Postfix's mail_params.h does this for its
parameters). Names and defaults are qmail's; our additions follow the same
pattern (one small flat file a setting) and are marked "ours" in the table.

Public:
    load_control(root) -> Control    read and validate every file at once
    Control                          attribute access (``ctl.concurrencyremote``),
                                     ``settings()`` for ``mta showctl``,
                                     ``is_local``, ``local_part_for``, ``route_for``,
                                     ``rcpt_allowed``
    ControlError                     a malformed file; names the file and line
    domain_matches(domain, patterns) qmail's ``domain`` / ``.suffix`` matching

Diagnostics: a bad number, a bad line or a missing ``me`` raises ControlError
naming ``control/FILE`` and the line; daemons refuse to start on it rather than run
on half a configuration. Trailing blanks are ignored everywhere; ``#`` comment
lines are allowed in the list files, as qmail allows them in ``locals``,
``rcpthosts``, ``smtproutes`` and ``virtualdomains``.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

from mta.remote.routes import Route, parse_routes, route_for

__all__ = ["Control", "ControlError", "Setting", "SETTINGS", "load_control", "domain_matches"]


class ControlError(Exception):
    """A control file that cannot be used as it is."""

    def __init__(self, name: str, line: int, message: str):
        where = f"control/{name}" + (f" line {line}" if line else "")
        super().__init__(f"{where}: {message}")
        self.name, self.line, self.message = name, line, message


@dataclass(frozen=True)
class Setting:
    name: str
    kind: str  # str | int | float | domains | virtualdomains | routes | servers | hostint | choice
    default: Any  # "ME" means: the value of control/me
    unit: str
    doc: str
    choices: tuple[str, ...] = ()


ME = "ME"
QMTP_PORT = 209
SETTINGS: tuple[Setting, ...] = (
    Setting("me", "str", None, "", "this host's fully qualified name; default for most host names"),
    Setting("defaultdomain", "str", ME, "", "domain appended to dotless host names (inject)"),
    Setting("defaulthost", "str", ME, "", "host added to addresses without one (inject)"),
    Setting("plusdomain", "str", ME, "", "domain appended to host names ending in + (inject)"),
    Setting("idhost", "str", ME, "", "host part of generated Message-IDs"),
    Setting("helohost", "str", ME, "", "name sent in EHLO/HELO by remote delivery"),
    Setting("envnoathost", "str", ME, "", "domain for envelope recipients without @"),
    Setting("localiphost", "str", ME, "", "name replacing a local [IP] literal in addresses"),
    Setting("smtpgreeting", "str", ME, "", "text after 220 in the SMTP greeting"),
    Setting("bouncefrom", "str", "MAILER-DAEMON", "", "local part of the From: of bounces"),
    Setting("bouncehost", "str", ME, "", "domain of the From: of bounces"),
    Setting("doublebounceto", "str", "postmaster", "", "recipient of double bounces"),
    Setting("doublebouncehost", "str", ME, "", "domain of doublebounceto"),
    Setting("locals", "domains", (ME,), "", "domains delivered locally"),
    Setting("rcpthosts", "domains", None, "", "domains accepted from clients that may not relay; absent = local domains only (fail closed)"),
    Setting("virtualdomains", "virtualdomains", (), "", "domain:prepend lines mapping virtual domains to local addresses"),
    Setting("smtproutes", "routes", (), "", "domain:relay[:port] static routes; :relay is the default route"),
    Setting("qmtproutes", "routes", (), "", "ours: like smtproutes, for destinations spoken to with QMTP"),
    Setting("qmqpservers", "servers", (), "", "QMQP servers tried in order (ip or ip:port)"),
    Setting("nameservers", "servers", (), "", "ours: DNS servers (ip or ip:port); absent = system resolver"),
    Setting("concurrencyremote", "int", 20, "connections", "simultaneous remote SMTP connections overall"),
    Setting("concurrencylocal", "int", 10, "deliveries", "simultaneous local deliveries"),
    Setting("concurrencyperhost", "int", 10, "connections", "ours: simultaneous connections to one receiving host"),
    Setting("hostconcurrency", "hostint", {}, "connections", "ours: host:N overrides of concurrencyperhost"),
    Setting("hostrate", "hostint", {}, "messages/s", "ours: host:N message rate caps (0 = no cap)"),
    Setting("databytes", "int", 0, "bytes", "largest message accepted by SMTP/QMTP; 0 = no limit"),
    Setting("queuelifetime", "int", 604800, "seconds", "how long a message may stay queued"),
    Setting("timeoutconnect", "int", 60, "seconds", "wait for a remote SMTP connection"),
    Setting("timeoutremote", "int", 1200, "seconds", "wait for each remote SMTP reply"),
    Setting("timeoutsmtpd", "int", 1200, "seconds", "deadline for each SMTP client command line; DATA: no stall longer, 500 bytes/s"),
    Setting("smtpgreetdelay", "float", 0.0, "seconds", "ours: delay before the SMTP greeting; input sent before it gets 554 (0 = greet at once)"),
    Setting("bounceformat", "choice", "qsbmf", "", "ours: qsbmf (qmail's) or dsn (RFC 3464)", ("qsbmf", "dsn")),
)
_BY_NAME = {s.name: s for s in SETTINGS}


def domain_matches(domain: str, patterns) -> bool:
    """True when ``domain`` is listed, or a ``.suffix`` pattern covers it (qmail's rule)."""
    domain = domain.lower()
    for pat in patterns:
        if pat.startswith("."):
            if domain.endswith(pat):
                return True
        elif domain == pat:
            return True
    return False


class Control:
    """Validated settings of one instance; read-only."""

    def __init__(self, root: Path, values: dict[str, Any], explicit: frozenset[str]):
        self.root = root
        self._values = values
        self._explicit = explicit

    def __getattr__(self, name: str) -> Any:
        try:
            return self.__dict__["_values"][name]
        except KeyError:
            raise AttributeError(name) from None

    def settings(self) -> Iterator[tuple[Setting, Any, bool]]:
        """(setting, value, is_default) for every declared setting, in table order."""
        for s in SETTINGS:
            yield s, self._values[s.name], s.name not in self._explicit

    def is_local(self, domain: str) -> bool:
        return domain.lower() in self.locals

    def local_part_for(self, address: str) -> str | None:
        """The local address qmail-send would deliver ``address`` to, or None if remote.

        ``locals`` wins over ``virtualdomains``; a virtual domain maps ``box@domain`` to
        ``prepend-box``; an empty prepend is an exception (delivered remotely).
        """
        box, _, domain = address.rpartition("@")
        if not _:
            box, domain = address, self.envnoathost
        domain = domain.lower()
        if domain in self.locals:
            return box
        prepend = self.virtual_prepend(domain)
        return f"{prepend}-{box}" if prepend else None

    def virtual_prepend(self, domain: str) -> str | None:
        vd = self.__dict__.get("_vd")
        if vd is None:  # built once: Control is read-only (a reload makes a new one)
            vd = self.__dict__["_vd"] = dict(self.virtualdomains)
        if domain in vd:
            return vd[domain] or None
        parts = domain.split(".")
        for i in range(1, len(parts)):
            suffix = "." + ".".join(parts[i:])
            if suffix in vd:
                return vd[suffix] or None
        return vd.get("") or None

    def route_for(self, domain: str, routes: tuple[Route, ...] | None = None) -> Route | None:
        """The static route for ``domain`` (exact, then ``.suffix``, then default)."""
        return route_for(domain, self.smtproutes if routes is None else routes)

    def rcpt_allowed(self, domain: str) -> bool:
        """May a client that is not allowed to relay send to ``domain``?"""
        if self.rcpthosts is None:
            return self.is_local(domain) or self.virtual_prepend(domain.lower()) is not None
        return domain_matches(domain, self.rcpthosts)


def load_control(root: Path | str) -> Control:
    """Read every control file of the instance at ``root``; raise ControlError on a bad one."""
    root = Path(root)
    cdir = root / "control"
    raw: dict[str, list[str]] = {}
    for s in SETTINGS:
        p = cdir / s.name
        try:
            raw[s.name] = p.read_text(encoding="utf-8").splitlines()
        except FileNotFoundError:
            continue
        except (OSError, UnicodeDecodeError) as e:
            raise ControlError(s.name, 0, f"unable to read: {e}") from e
    if not raw.get("me") or not raw["me"][0].strip():
        raise ControlError("me", 0, "missing or empty; it must hold this host's name (mta init writes it)")
    values: dict[str, Any] = {}
    for s in SETTINGS:
        if s.name in raw:
            values[s.name] = _PARSERS[s.kind](s, raw[s.name])
    me = values["me"]
    for s in SETTINGS:
        if s.name not in values:
            values[s.name] = _default(s, me)
    return Control(root, values, frozenset(raw))


def _default(s: Setting, me: str) -> Any:
    if s.default == ME:
        return me
    if s.kind == "domains" and s.default is not None:
        return frozenset(me.lower() if d == ME else d for d in s.default)
    return s.default


def _content(lines: list[str], comments: bool = True) -> Iterator[tuple[int, str]]:
    for n, line in enumerate(lines, 1):
        line = line.rstrip()
        if not line or (comments and line.lstrip().startswith("#")):
            continue
        yield n, line


def _parse_str(s: Setting, lines: list[str]) -> str:
    value = lines[0].strip() if lines else ""
    if not value:
        raise ControlError(s.name, 1, "empty first line")
    return value


def _parse_int(s: Setting, lines: list[str]) -> int:
    text = lines[0].strip() if lines else ""
    if not text.isdigit():
        raise ControlError(s.name, 1, f"not a non-negative whole number: {text!r}")
    return int(text)


def _parse_float(s: Setting, lines: list[str]) -> float:
    text = lines[0].strip() if lines else ""
    whole, _, frac = text.partition(".")
    if not (whole or frac) or not (whole or "0").isdigit() or not (frac or "0").isdigit():
        raise ControlError(s.name, 1, f"not a non-negative number: {text!r}")
    return float(text)


def _parse_choice(s: Setting, lines: list[str]) -> str:
    value = _parse_str(s, lines).lower()
    if value not in s.choices:
        raise ControlError(s.name, 1, f"{value!r} is not one of {', '.join(s.choices)}")
    return value


def _parse_domains(s: Setting, lines: list[str]) -> frozenset[str]:
    out = set()
    for n, line in _content(lines):
        d = line.strip().lower()
        if any(c.isspace() for c in d) or "@" in d:
            raise ControlError(s.name, n, f"not a domain: {d!r}")
        out.add(d)
    return frozenset(out)


def _parse_virtualdomains(s: Setting, lines: list[str]) -> tuple[tuple[str, str], ...]:
    out = []
    for n, line in _content(lines):
        domain, sep, prepend = line.strip().partition(":")
        if not sep or any(c.isspace() for c in line.strip()):
            raise ControlError(s.name, n, f"expected domain:prepend, got {line!r}")
        out.append((domain.lower(), prepend))
    return tuple(out)


def _parse_routes(s: Setting, lines: list[str]) -> tuple[Route, ...]:
    try:
        routes = parse_routes(lines)
    except ValueError as e:
        line, msg = e.args if len(e.args) == 2 else (0, str(e))
        raise ControlError(s.name, line, msg) from e
    if s.name == "qmtproutes":  # QMTP's port is 209 where a line names none
        given = [_names_port(ln) for ln in lines if ln.strip() and not ln.lstrip().startswith("#")]
        routes = tuple(r if has else Route(r.domain, r.host, QMTP_PORT)
                       for r, has in zip(routes, given))
    return routes


def _names_port(line: str) -> bool:
    rest = line.strip().partition(":")[2]
    if rest.startswith("["):
        rest = rest[rest.find("]") + 1:]
        return rest.startswith(":")
    return ":" in rest


def _parse_servers(s: Setting, lines: list[str]) -> tuple[tuple[str, int], ...]:
    out = []
    default_port = 53 if s.name == "nameservers" else 628
    for n, line in _content(lines):
        text = line.strip()
        host, port = text, default_port
        if text.count(":") == 1:
            host, _, p = text.partition(":")
            if not p.isdigit() or not 0 < int(p) < 65536:
                raise ControlError(s.name, n, f"bad port in {text!r}")
            port = int(p)
        try:
            ipaddress.ip_address(host)
        except ValueError:
            raise ControlError(s.name, n, f"not an IP address: {host!r}") from None
        out.append((host, port))
    return tuple(out)


def _parse_hostint(s: Setting, lines: list[str]) -> dict[str, int]:
    out = {}
    for n, line in _content(lines):
        host, sep, num = line.strip().rpartition(":")
        if not sep or not host or not num.isdigit():
            raise ControlError(s.name, n, f"expected host:N, got {line.strip()!r}")
        out[host.lower()] = int(num)
    return out


_PARSERS: dict[str, Callable[[Setting, list[str]], Any]] = {
    "str": _parse_str,
    "int": _parse_int,
    "float": _parse_float,
    "choice": _parse_choice,
    "domains": _parse_domains,
    "virtualdomains": _parse_virtualdomains,
    "routes": _parse_routes,
    "servers": _parse_servers,
    "hostint": _parse_hostint,
}
