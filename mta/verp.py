"""VERP sender rewriting, exactly as qmail-send's ``senderadd()`` (qmail-ezmlm.md 1.4).

What it does: a sender of the form ``PRE@HOST-@[]`` asks for per-recipient VERP.
For a delivery to ``BOX@DOMAIN`` the envelope sender becomes
``PRE`` + ``BOX`` + ``=`` + ``DOMAIN`` + ``@`` + ``HOST``; ezmlm's
``list-return-7-@lists.local.test-@[]`` to ``a@other.example`` gives
``list-return-7-a=other.example@lists.local.test``. qmail inserts only the ``=``;
the ``-`` separating the prefix is part of ``PRE``.

Public functions: ``verp_sender(sender, recipient)``, ``is_verp(sender)``,
``bounce_address(sender)``.

How it fails: it does not. A sender that is not a VERP sender is returned
unchanged, and so is a VERP sender when the recipient has no ``@`` (qmail does the
same). A VERP suffix with no ``@`` before it keeps qmail's arithmetic (j = 0).
"""

from __future__ import annotations

VERP_SUFFIX = "-@[]"


def is_verp(sender: str) -> bool:
    """True when ``sender`` asks for per-recipient VERP (ends in ``-@[]``)."""
    return sender.endswith(VERP_SUFFIX)


def verp_sender(sender: str, recipient: str) -> str:
    """The envelope sender qmail-send uses for ``recipient`` (``senderadd()``)."""
    if not sender.endswith(VERP_SUFFIX):
        return sender
    k = recipient.rfind("@")
    if k < 0:
        return sender
    # qmail: j = last '@' in sender[0 .. len-4); 0 when there is none.
    j = sender.rfind("@", 0, len(sender) - 4)
    if j < 0:
        j = 0
    return f"{sender[:j]}{recipient[:k]}={recipient[k + 1:]}@{sender[j + 1:-4]}"


def bounce_address(sender: str) -> str:
    """Where qmail-send sends a bounce for ``sender``: the ``-@[]`` stripped.

    ``owner-@host-@[]`` -> ``owner-@host`` (``injectbounce()``); other senders are
    returned unchanged.
    """
    if sender.endswith(VERP_SUFFIX):
        return sender[: -len(VERP_SUFFIX)]
    return sender
