"""control files: qmail's names and defaults, our additions, and errors naming file and line."""

import pytest

from mta.control import ControlError, domain_matches, load_control


def make(tmp_path, **files):
    c = tmp_path / "control"
    c.mkdir(exist_ok=True)
    for name, text in files.items():
        (c / name).write_text(text)
    return tmp_path


def test_defaults_follow_qmail(tmp_path):
    ctl = load_control(make(tmp_path, me="mx.example.org\n"))
    assert ctl.me == "mx.example.org"
    assert ctl.concurrencyremote == 20
    assert ctl.concurrencylocal == 10
    assert ctl.concurrencyperhost == 10
    assert ctl.queuelifetime == 604800
    assert ctl.timeoutconnect == 60
    assert ctl.timeoutremote == 1200
    assert ctl.timeoutsmtpd == 1200
    assert ctl.databytes == 0
    assert ctl.bouncefrom == "MAILER-DAEMON"
    assert ctl.doublebounceto == "postmaster"
    for name in ("defaultdomain", "defaulthost", "plusdomain", "idhost", "helohost",
                 "envnoathost", "bouncehost", "doublebouncehost", "smtpgreeting"):
        assert getattr(ctl, name) == "mx.example.org", name
    assert ctl.locals == frozenset({"mx.example.org"})
    assert ctl.rcpthosts is None
    assert ctl.nameservers == ()
    assert ctl.bounceformat == "qsbmf"


def test_showctl_marks_defaults(tmp_path):
    ctl = load_control(make(tmp_path, me="h.test\n", concurrencyremote="500\n"))
    rows = {s.name: (v, d) for s, v, d in ctl.settings()}
    assert rows["concurrencyremote"] == (500, False)
    assert rows["concurrencylocal"] == (10, True)
    assert rows["me"] == ("h.test", False)


def test_missing_me_refused(tmp_path):
    with pytest.raises(ControlError, match="control/me"):
        load_control(make(tmp_path))


@pytest.mark.parametrize("name,text,line", [
    ("concurrencyremote", "twenty\n", 1),
    ("databytes", "-5\n", 1),
    ("virtualdomains", "# c\nvirt.test\n", 2),
    ("nameservers", "127.0.0.1:99999\n", 1),
    ("nameservers", "\nnot-an-ip\n", 2),
    ("hostconcurrency", "127.0.1.1:5\n127.0.1.2\n", 2),
    ("bounceformat", "mime\n", 1),
    ("locals", "a.test\nbad domain\n", 2),
])
def test_malformed_file_names_file_and_line(tmp_path, name, text, line):
    with pytest.raises(ControlError) as e:
        load_control(make(tmp_path, me="h.test\n", **{name: text}))
    assert e.value.name == name and e.value.line == line
    assert f"control/{name} line {line}" in str(e.value)


def test_local_and_virtual_mapping(tmp_path):
    ctl = load_control(make(
        tmp_path, me="h.test\n", locals="h.test\nLocal.Test\n",
        virtualdomains="virt.test:joe\n.sub.test:sub\nexcept.sub.test:\n", envnoathost="env.test\n"))
    assert ctl.local_part_for("Alice@LOCAL.test") == "Alice"
    assert ctl.local_part_for("box@virt.test") == "joe-box"
    assert ctl.local_part_for("box@a.sub.test") == "sub-box"
    assert ctl.local_part_for("box@except.sub.test") is None
    assert ctl.local_part_for("box@other.example") is None
    assert ctl.local_part_for("nobody") is None  # env.test is not local


def test_nameservers_and_hostint(tmp_path):
    ctl = load_control(make(tmp_path, me="h.test\n", nameservers="127.0.0.1:5353\n::1\n",
                            hostconcurrency="127.0.1.1:3\n::1:2\n"))
    assert ctl.nameservers == (("127.0.0.1", 5353), ("::1", 53))
    assert ctl.hostconcurrency == {"127.0.1.1": 3, "::1": 2}


def test_rcpthosts_fail_closed_without_file(tmp_path):
    ctl = load_control(make(tmp_path, me="h.test\n", virtualdomains="v.test:v\n"))
    assert ctl.rcpt_allowed("h.test") and ctl.rcpt_allowed("v.test")
    assert not ctl.rcpt_allowed("other.example")
    ctl = load_control(make(tmp_path, rcpthosts="h.test\n.wild.test\n"))
    assert ctl.rcpt_allowed("a.wild.test") and not ctl.rcpt_allowed("wild.test")


def test_domain_matches():
    assert domain_matches("A.Example", ["a.example"])
    assert domain_matches("x.a.example", [".a.example"])
    assert not domain_matches("xa.example", [".a.example"])
