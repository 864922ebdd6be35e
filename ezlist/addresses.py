"""Command addresses of a list: parse a local part, build every address form.

What it does: ezmlm's address grammar (qmail-ezmlm.md 2.2-2.4) for list ``L@H``.
The forms, with ``T`` a target ``box=dom`` (qmail VERP encoding of ``box@dom``;
the LAST ``=`` separates, since a domain cannot contain one) and ``TIME.MAC`` a
cookie token (ezlist.cookies):

    L                          post                      Action.POST
    L-owner                    the human owner           Action.OWNER
    L-help                     help text                 Action.HELP
    L-subscribe[-T]            ask to subscribe          Action.SUBSCRIBE
    L-unsubscribe[-T]          ask to unsubscribe        Action.UNSUBSCRIBE
    L-sc.TIME.MAC-T            user confirms subscribe   Action.CONFIRM_SUBSCRIBE
    L-uc.TIME.MAC-T            user confirms unsubscribe Action.CONFIRM_UNSUBSCRIBE
    L-tc.TIME.MAC-T            moderator approves a subscription  Action.APPROVE_SUBSCRIBE
    L-accept-TIME.NUM.MAC      moderator accepts held post NUM    Action.ACCEPT
    L-reject-TIME.NUM.MAC      moderator rejects held post NUM    Action.REJECT
    L-return-NUM-T             post NUM bounced at T (VERP)       Action.BOUNCE
    L-return-NUM-              post NUM bounced, no VERP: parse the body  Action.BOUNCE
    L-return-warn-TIME.MAC-T   a bounce warning to T bounced      Action.BOUNCE_WARN
    L-return-probe-TIME.MAC-T  a bounce probe to T bounced        Action.BOUNCE_PROBE
    L-return-                  a reply of ours bounced (discard)  Action.BOUNCE_TRASH

Command words are matched case-insensitively; the target's local part keeps its
case, its domain is lower-cased. Anything under ``L-`` that does not match a form
exactly (an empty or malformed target, a non-ASCII target, junk after a word) is
``Action.UNKNOWN``: the caller answers with help and changes nothing.

Public functions:
    parse_command(list_local, local_part) -> Command | None  (None: not this list)
    decode_target(text) -> str | None;  encode_target(address) -> str
    list_address, command_address, confirm_address, moderation_address,
    post_sender, bounce_address, warn_address, probe_address, trash_sender

Failures: parsing never raises; builders raise ValueError for an address that
cannot be encoded (no ``@``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import Enum


class Action(Enum):
    POST = "post"
    OWNER = "owner"
    HELP = "help"
    SUBSCRIBE = "subscribe"
    UNSUBSCRIBE = "unsubscribe"
    CONFIRM_SUBSCRIBE = "sc"
    CONFIRM_UNSUBSCRIBE = "uc"
    APPROVE_SUBSCRIBE = "tc"
    ACCEPT = "accept"
    REJECT = "reject"
    BOUNCE = "bounce"
    BOUNCE_WARN = "warn"
    BOUNCE_PROBE = "probe"
    BOUNCE_TRASH = "trash"
    UNKNOWN = "unknown"


@dataclass(frozen=True, slots=True)
class Command:
    """One parsed command address. ``cookie`` is the MAC part only."""

    action: Action
    target: str | None = None
    cookie: str | None = None
    time: int | None = None
    number: int | None = None

    @property
    def token(self) -> str | None:
        """The ``TIME.MAC`` token for ezlist.cookies.check_cookie, if any."""
        if self.cookie is None or self.time is None:
            return None
        return f"{self.time}.{self.cookie}"


UNKNOWN = Command(Action.UNKNOWN)
_WORDS = {"help": Action.HELP, "owner": Action.OWNER}
_REQUESTS = {"subscribe": Action.SUBSCRIBE, "unsubscribe": Action.UNSUBSCRIBE}
_CONFIRMS = {
    "sc": Action.CONFIRM_SUBSCRIBE,
    "uc": Action.CONFIRM_UNSUBSCRIBE,
    "tc": Action.APPROVE_SUBSCRIBE,
}
_MODERATION = {"accept": Action.ACCEPT, "reject": Action.REJECT}
_NOTICES = {"warn": Action.BOUNCE_WARN, "probe": Action.BOUNCE_PROBE}
_LOCAL = re.compile(r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~.-]{1,64}", re.ASCII)
_LABEL = r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?"
_DOMAIN = re.compile(rf"(?:{_LABEL}\.)*{_LABEL}|\[[0-9a-f:.]{{2,45}}\]", re.ASCII)
_TOKEN = re.compile(r"([0-9]{1,12})\.([a-z2-7]{16})", re.ASCII)
_MOD_TOKEN = re.compile(r"([0-9]{1,12})\.([0-9]{1,12})\.([a-z2-7]{16})", re.ASCII)
_NUMBER = re.compile(r"[0-9]{1,12}", re.ASCII)


def decode_target(text: str) -> str | None:
    """``box=dom`` -> ``box@dom`` (domain lower-cased); None when malformed."""
    local, eq, domain = text.rpartition("=")
    if not eq or not text.isascii():
        return None
    domain = domain.lower()
    if len(domain) > 253 or not _LOCAL.fullmatch(local) or not _DOMAIN.fullmatch(domain):
        return None
    return f"{local}@{domain}"


def encode_target(address: str) -> str:
    """``box@dom`` -> ``box=dom`` (qmail VERP encoding)."""
    local, at, domain = address.rpartition("@")
    if not at or not local or not domain:
        raise ValueError(f"not an address: {address!r}")
    return f"{local}={domain.lower()}"


def parse_command(list_local: str, local_part: str) -> Command | None:
    """Classify ``local_part`` (qmail-local's LOCAL) for list ``list_local``.

    Returns None when the address is not the list's nor under ``list_local-``.
    """
    base = list_local.lower()
    if local_part.lower() == base:
        return Command(Action.POST)
    if not local_part.lower().startswith(base + "-"):
        return None
    return _parse_extension(local_part[len(base) + 1 :])


def _parse_extension(ext: str) -> Command:
    word, dash, rest = ext.partition("-")
    word = word.lower()
    if word in _WORDS and not dash:
        return Command(_WORDS[word])
    if word in _REQUESTS:
        return _parse_request(_REQUESTS[word], dash, rest)
    if word in _MODERATION and dash:
        return _parse_moderation(_MODERATION[word], rest)
    if word == "return" and dash:
        return _parse_return(rest)
    kind, dot, token_and_target = ext.partition(".")
    if dot and kind.lower() in _CONFIRMS:
        return _parse_cookie_target(_CONFIRMS[kind.lower()], token_and_target)
    return UNKNOWN


def _parse_request(action: Action, dash: str, rest: str) -> Command:
    if not dash:
        return Command(action)
    target = decode_target(rest)
    return Command(action, target=target) if target else UNKNOWN


def _parse_cookie_target(action: Action, text: str) -> Command:
    token, dash, target_text = text.partition("-")
    match = _TOKEN.fullmatch(token.lower())
    target = decode_target(target_text) if dash else None
    if match is None or target is None:
        return UNKNOWN
    return Command(action, target=target, cookie=match.group(2), time=int(match.group(1)))


def _parse_moderation(action: Action, text: str) -> Command:
    match = _MOD_TOKEN.fullmatch(text.lower())
    if match is None:
        return UNKNOWN
    time, number, mac = match.groups()
    return Command(action, cookie=mac, time=int(time), number=int(number))


def _parse_return(text: str) -> Command:
    if text == "":
        return Command(Action.BOUNCE_TRASH)
    head, dash, rest = text.partition("-")
    if head.lower() in _NOTICES and dash:
        return _parse_cookie_target(_NOTICES[head.lower()], rest)
    if not dash or not _NUMBER.fullmatch(head):
        return UNKNOWN
    if rest == "":
        return Command(Action.BOUNCE, number=int(head))
    target = decode_target(rest)
    return Command(Action.BOUNCE, target=target, number=int(head)) if target else UNKNOWN


def list_address(local: str, host: str) -> str:
    return f"{local}@{host}"


def command_address(local: str, host: str, word: str, target: str | None = None) -> str:
    """``L-word@H`` or ``L-word-box=dom@H`` (word: help, owner, subscribe, ...)."""
    if target is None:
        return f"{local}-{word}@{host}"
    return f"{local}-{word}-{encode_target(target)}@{host}"


def confirm_address(local: str, host: str, kind: str, token: str, target: str) -> str:
    """``L-sc.TIME.MAC-box=dom@H``; kind is ``sc``, ``uc`` or ``tc``."""
    if kind not in _CONFIRMS:
        raise ValueError(f"unknown confirmation kind {kind!r}")
    return f"{local}-{kind}.{token}-{encode_target(target)}@{host}"


def moderation_address(local: str, host: str, verb: str, time: int, number: int, mac: str) -> str:
    """``L-accept-TIME.NUM.MAC@H`` or ``L-reject-...``."""
    if verb not in _MODERATION:
        raise ValueError(f"unknown moderation verb {verb!r}")
    return f"{local}-{verb}-{time}.{number}.{mac}@{host}"


def post_sender(local: str, host: str, number: int) -> str:
    """Envelope sender of post NUM, asking qmail-style VERP: ``L-return-NUM-@H-@[]``."""
    return f"{local}-return-{number}-@{host}-@[]"


def bounce_address(local: str, host: str, number: int, target: str) -> str:
    """What ``post_sender`` becomes for one recipient: ``L-return-NUM-box=dom@H``."""
    return f"{local}-return-{number}-{encode_target(target)}@{host}"


def warn_address(local: str, host: str, token: str, target: str) -> str:
    """Envelope sender of a bounce warning to ``target``."""
    return f"{local}-return-warn-{token}-{encode_target(target)}@{host}"


def probe_address(local: str, host: str, token: str, target: str) -> str:
    """Envelope sender of a bounce probe to ``target``."""
    return f"{local}-return-probe-{token}-{encode_target(target)}@{host}"


def trash_sender(local: str, host: str) -> str:
    """Envelope sender of our replies (help, confirmations): bounces are discarded."""
    return f"{local}-return-@{host}"
