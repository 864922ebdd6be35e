import pytest

from ezlist import addresses as A
from ezlist.addresses import Action, Command, parse_command

TOKEN = "1700000000.abcdefghijklmnop"


@pytest.mark.parametrize("local, expected", [
    ("sos", Command(Action.POST)),
    ("SOS", Command(Action.POST)),
    ("sos-help", Command(Action.HELP)),
    ("sos-owner", Command(Action.OWNER)),
    ("sos-subscribe", Command(Action.SUBSCRIBE)),
    ("sos-Subscribe", Command(Action.SUBSCRIBE)),
    ("sos-unsubscribe", Command(Action.UNSUBSCRIBE)),
    ("sos-subscribe-box=Example.ORG", Command(Action.SUBSCRIBE, target="box@example.org")),
    ("sos-unsubscribe-Jo.Smith=ex.org", Command(Action.UNSUBSCRIBE, target="Jo.Smith@ex.org")),
    ("sos-subscribe-a=b=c", Command(Action.SUBSCRIBE, target="a=b@c")),
    (f"sos-sc.{TOKEN}-bob=local.test", Command(Action.CONFIRM_SUBSCRIBE, "bob@local.test",
                                               "abcdefghijklmnop", 1700000000)),
    (f"sos-uc.{TOKEN.upper()}-bob=local.test", Command(Action.CONFIRM_UNSUBSCRIBE,
                                                       "bob@local.test", "abcdefghijklmnop",
                                                       1700000000)),
    (f"sos-tc.{TOKEN}-bob=local.test", Command(Action.APPROVE_SUBSCRIBE, "bob@local.test",
                                               "abcdefghijklmnop", 1700000000)),
    ("sos-accept-1700000000.42.abcdefghijklmnop",
     Command(Action.ACCEPT, None, "abcdefghijklmnop", 1700000000, 42)),
    ("sos-reject-1700000000.42.abcdefghijklmnop",
     Command(Action.REJECT, None, "abcdefghijklmnop", 1700000000, 42)),
    ("sos-return-123-God=heaven.af.mil", Command(Action.BOUNCE, target="God@heaven.af.mil",
                                                 number=123)),
    ("sos-return-123-", Command(Action.BOUNCE, number=123)),
    ("sos-return-", Command(Action.BOUNCE_TRASH)),
    (f"sos-return-warn-{TOKEN}-a=b.test", Command(Action.BOUNCE_WARN, "a@b.test",
                                                  "abcdefghijklmnop", 1700000000)),
    (f"sos-return-probe-{TOKEN}-a=b.test", Command(Action.BOUNCE_PROBE, "a@b.test",
                                                   "abcdefghijklmnop", 1700000000)),
])
def test_every_form(local, expected):
    assert parse_command("sos", local) == expected


@pytest.mark.parametrize("local", [
    "sos-subscribe-", "sos-subscribe-=dom.test", "sos-subscribe-box=", "sos-subscribe-box",
    "sos-subscribe-bøx=dom.test", "sos-subscribe-box=dömain.test", "sos-subscribe-a b=c.test",
    "sos-subscribe-a=b_c", "sos-subscribe-<a>=b.test", "sos-helpme", "sos-help-x",
    "sos-sc.123-bob=local.test", f"sos-sc.{TOKEN}", f"sos-sc.{TOKEN}-", f"sos-xc.{TOKEN}-a=b.c",
    "sos-accept-", "sos-accept-1.2", "sos-accept-1.x.abcdefghijklmnop", "sos-return-x-a=b.c",
    "sos-return-12-bad", "sos-return-warn-1.2-a=b.c", "sos-", "sos-owner-x", "sos-\u0661",
    "sos-subscribe-a=" + "b" * 300 + ".test",
])
def test_hostile_forms_are_unknown(local):
    assert parse_command("sos", local) == Command(Action.UNKNOWN)


def test_other_addresses_are_not_ours():
    assert parse_command("sos", "sosa") is None
    assert parse_command("sos", "other-subscribe") is None
    assert parse_command("sos-digest", "sos-subscribe") is None


def test_list_name_with_dash():
    assert parse_command("my-list", "my-list-help") == Command(Action.HELP)
    assert parse_command("my", "my-list-help") == Command(Action.UNKNOWN)


def test_builders_round_trip():
    L, H = "sos", "lists.local.test"
    def local_of(address):
        return address.rpartition("@")[0]
    assert A.command_address(L, H, "subscribe", "Box@Ex.org") == "sos-subscribe-Box=ex.org@" + H
    built = A.confirm_address(L, H, "sc", TOKEN, "a=b@c.test")
    cmd = parse_command(L, local_of(built))
    assert (cmd.action, cmd.target, cmd.token) == (Action.CONFIRM_SUBSCRIBE, "a=b@c.test", TOKEN)
    mod = A.moderation_address(L, H, "accept", 1700000000, 7, "abcdefghijklmnop")
    assert parse_command(L, local_of(mod)).number == 7
    assert A.post_sender(L, H, 123) == "sos-return-123-@lists.local.test-@[]"
    bounce = A.bounce_address(L, H, 123, "God@heaven.af.mil")
    assert bounce == "sos-return-123-God=heaven.af.mil@lists.local.test"
    assert parse_command(L, local_of(A.warn_address(L, H, TOKEN, "x@y.test"))).action \
        is Action.BOUNCE_WARN
    assert parse_command(L, local_of(A.probe_address(L, H, TOKEN, "x@y.test"))).action \
        is Action.BOUNCE_PROBE
    assert parse_command(L, local_of(A.trash_sender(L, H))).action is Action.BOUNCE_TRASH
    with pytest.raises(ValueError):
        A.encode_target("no-at-sign")
