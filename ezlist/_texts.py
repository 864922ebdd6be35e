"""Built-in message templates (our own words), copied into ``lists/NAME/text/``.

Tags: <#L#> list local part, <#H#> list host, <#A#> the address concerned
(target or accept address), <#R#> the address to reply to (confirm or reject),
<#n#> a message number, <#N#> a list of message numbers. A line ``<=m=>`` starts
a section kept only for moderated lists (ezmlm flag letters; upper case = flag
off), ``<==>`` ends it.
"""

DEFAULTS: dict[str, str] = {
    "top": """\
Hello, this is the list program for <#L#>@<#H#>.

""",
    "bottom": """\

--- Commands for the <#L#>@<#H#> list:
To join:   mail <#L#>-subscribe@<#H#>
To leave:  mail <#L#>-unsubscribe@<#H#>
Help:      mail <#L#>-help@<#H#>
A person runs this list: <#L#>-owner@<#H#>
""",
    "sub-confirm": """\
Someone, perhaps you, asked to add the address
    <#A#>
to the <#L#>@<#H#> mailing list.

To confirm, reply to this message, or send an empty message to
    <#R#>

This check proves that the address receives mail and that its owner wants
the list. If you did not ask, ignore this message: nothing will change.
""",
    "sub-ok": """\
Welcome: <#A#> now receives the <#L#>@<#H#> mailing list.
Keep this message; it says how to leave the list.
""",
    "sub-nop": """\
<#A#> was already on the <#L#>@<#H#> list; nothing changed.
""",
    "sub-bad": """\
That confirmation address was not valid, had expired or had been used.
A new confirmation request follows: please reply to
    <#R#>
""",
    "unsub-confirm": """\
Someone, perhaps you, asked to remove the address
    <#A#>
from the <#L#>@<#H#> mailing list.

To confirm, reply to this message, or send an empty message to
    <#R#>

If you did not ask, ignore this message: you stay on the list.
""",
    "unsub-ok": """\
<#A#> has left the <#L#>@<#H#> mailing list. Sorry to see you go.
""",
    "unsub-nop": """\
<#A#> was not on the <#L#>@<#H#> list; nothing changed.
""",
    "unsub-bad": """\
That confirmation address was not valid, had expired or had been used.
A new confirmation request follows: please reply to
    <#R#>
""",
    "help": """\
This list answers mail sent to these addresses:

    <#L#>-subscribe@<#H#>      join the list
    <#L#>-unsubscribe@<#H#>    leave the list
    <#L#>-help@<#H#>           this text

To join or leave with another address, e.g. jo@example.org, write to
    <#L#>-subscribe-jo=example.org@<#H#>
The confirmation request goes to that address.
<=m=>
Posts to this list are read by a moderator before they are sent out.
<==>
<=u=>
Only subscribers may post to this list.
<==>
""",
    "bounce-warn": """\
Mail from the <#L#>@<#H#> list to your address <#A#>
has been bouncing. Messages you may have missed: <#N#>

This is only a warning; nothing has changed yet. If this warning bounces
too, we will send a last probe, and if that bounces, the address is removed.
""",
    "bounce-probe": """\
Mail from the <#L#>@<#H#> list to <#A#> keeps bouncing,
including our warning. If this message bounces as well, the address will
be removed from the list. To rejoin later: <#L#>-subscribe@<#H#>
""",
    "mod-request": """\
A post to <#L#>@<#H#> is waiting for you.
To send it to the list, reply to:
    <#A#>
To refuse it, write to:
    <#R#>
The post follows.
""",
    "mod-reject": """\
Your post to <#L#>@<#H#> was not accepted by the moderator.
""",
    "mod-timeout": """\
Your post to <#L#>@<#H#> was not handled by a moderator in time and
has been returned to you.
""",
    "mod-sub": """\
The address <#A#> asks to join <#L#>@<#H#>.
To let it in, reply to:
    <#R#>
""",
}
