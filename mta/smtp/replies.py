"""Named SMTP replies spoken by the server core (aiosmtpd ``statuscodes`` style).

What it does: every reply line ``mta.smtp.server`` can send is a constant here, so
tests and the server agree on the exact text. Where qmail-smtpd has a text for the
situation we use qmail's words (``qmail-smtpd.c``); the rest follow Postfix, with an
RFC 3463 enhanced status code. Templates containing ``{me}`` (or another field) are
filled with ``str.format`` by the server.

Public names: the ``R<code>_<WHAT>`` constants below and ``BARE_LF_URL``;
``wire(line)``, a reply line as bytes with its CRLF (the constants' bytes are made
once), and ``ehlo_reply(me, size, starttls)``, the multi-line EHLO answer.

How it fails: it does not; these are strings without CR or LF.
"""

from __future__ import annotations

import functools

BARE_LF_URL = "https://cr.yp.to/docs/smtplf.html"

# Connection level.
R220_GREETING = "220 {greeting} ESMTP"
R221_BYE = "221 {me}"
R421_TOO_MANY_CONNECTIONS = "421 {me} too many connections, try again later (#4.3.2)"
R421_TOO_MANY_FROM_HOST = "421 {me} too many connections from your address, try again later (#4.3.2)"
R421_TOO_MANY_ERRORS = "421 4.7.0 {me} Error: too many errors"
R451_TIMEOUT = "451 timeout (#4.4.2)"
R554_ACCESS_DENIED = "554 {me} sorry, you are not allowed to use this server (#5.7.1)"
R554_SYNC = "554 5.5.0 Error: SMTP protocol synchronization"

# Greeting, help and harmless commands.
R250_HELO = "250 {me}"
EHLO_KEYWORDS = ("PIPELINING", "SIZE {size}", "8BITMIME")
EHLO_STARTTLS = "STARTTLS"
R250_OK = "250 ok"
R250_FLUSHED = "250 flushed"
R214_HELP = "214 {me} ESMTP; see RFC 5321. Commands: HELO EHLO MAIL RCPT DATA RSET NOOP QUIT VRFY HELP"
R252_VRFY = "252 send some mail, i'll try my best"
R220_STARTTLS = "220 ready to start TLS"

# Syntax and sequence (qmail texts where qmail has one).
R500_LINE_TOO_LONG = "500 5.5.2 Error: line too long"
R501_NUL = "501 5.5.2 NUL characters are not allowed in SMTP commands"
R501_SYNTAX = "501 5.5.4 syntax error in parameters or arguments"
R501_ADDRESS_SYNTAX = "501 5.1.3 sorry, that address is not valid"
R501_ADDRESS_TOO_LONG = "501 5.1.3 sorry, that address is too long"
R501_STARTTLS_ARGS = "501 5.5.4 STARTTLS takes no arguments"
R502_UNIMPLEMENTED = "502 unimplemented (#5.5.1)"
R503_HELLO_FIRST = "503 5.5.1 Error: send HELO/EHLO first"
R503_NESTED_MAIL = "503 5.5.1 Error: nested MAIL command"
R503_MAIL_FIRST = "503 MAIL first (#5.5.1)"
R503_RCPT_FIRST = "503 RCPT first (#5.5.1)"
R503_ALREADY_TLS = "503 5.5.1 Error: TLS already active"
R555_SYNTAX = "555 syntax error (#5.5.4)"
R555_PARAMETER = "555 5.5.4 unsupported parameter {param}"

# Envelope.
R250_SENDER_OK = "250 ok"
R250_RCPT_OK = "250 ok"
R354_GO_AHEAD = "354 go ahead"
R452_TOO_MANY_RECIPIENTS = "452 4.5.3 Error: too many recipients"
R550_NO_MAILBOX = "550 sorry, no mailbox here by that name (#5.1.1)"
R552_TOO_BIG = "552 sorry, that message size exceeds my databytes limit (#5.3.4)"
R553_RCPTHOSTS = "553 sorry, that domain isn't in my list of allowed rcpthosts (#5.7.1)"
R553_ROUTING = "553 sorry, source routes, percent, bang and quoted @ addresses are not accepted here (#5.7.1)"

# End of DATA.
R250_QUEUED = "250 ok {stamp} qp {qp}"
R451_BARE_LF = "451 See " + BARE_LF_URL + "."
R451_QQ = "451 {text}"
R554_QQ = "554 {text}"
R451_QQ_DEFAULT = "451 qq temporary problem (#4.3.0)"
R554_TOO_MANY_HOPS = "554 too many hops, this message is looping (#5.4.6)"


_WIRE = {v: v.encode("latin-1") + b"\r\n" for k, v in list(globals().items())
         if k.startswith("R") and isinstance(v, str) and "{" not in v}


def wire(line: str) -> bytes:
    """``line`` as sent: latin-1 (unencodable characters as ?) and CRLF; constants precomputed."""
    data = _WIRE.get(line)
    return data if data is not None else line.encode("latin-1", "replace") + b"\r\n"


@functools.lru_cache(maxsize=64)
def ehlo_reply(me: str, size: int, starttls: bool) -> bytes:
    """The multi-line EHLO answer (built once per name, size and STARTTLS offer)."""
    words = [me] + [k.format(size=size) for k in EHLO_KEYWORDS] + ([EHLO_STARTTLS] if starttls else [])
    lines = [f"250-{w}" for w in words[:-1]] + [f"250 {words[-1]}"]
    return "\r\n".join(lines).encode("latin-1", "replace") + b"\r\n"
