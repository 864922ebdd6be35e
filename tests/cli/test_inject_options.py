"""qmail-inject's options through ``mta inject`` and the ``sendmail`` shim, run as
real commands: ``-F NAME``, ``-i`` / ``-oi`` (a lone dot does not end the message),
``-t`` with Cc recipients and Bcc stripped."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

BIN = Path(sys.executable).parent
COMMANDS = [["mta", "inject"], ["sendmail"]]


def run(args, root, stdin=b""):
    env = dict(os.environ, MTA_ROOT=str(root))
    return subprocess.run([str(BIN / args[0]), *args[1:]], input=stdin, capture_output=True,
                          env=env, timeout=60)


@pytest.fixture
def root(tmp_path):
    r = tmp_path / "inst"
    p = run(["mta", "--root", str(r), "init", "--me", "mx.test", "--spare-files", "0"], r)
    assert p.returncode == 0, p.stderr
    return r


def only_message(root) -> tuple[dict, bytes, list[str]]:
    """The one queued message: its JSON summary, its body, its recipients."""
    import sqlite3

    p = run(["mta", "queue", "--json"], root)
    assert p.returncode == 0, p.stderr
    [m] = [json.loads(line) for line in p.stdout.splitlines()]
    body = (root / "queue" / "mess" / str(m["id"])).read_bytes()
    with sqlite3.connect(root / "queue" / "queue.db") as conn:
        rcpts = [a for (a,) in conn.execute(
            "SELECT addr FROM recipients WHERE msg = ? ORDER BY id", (m["id"],))]
    return m, body, rcpts


def header(body: bytes) -> bytes:
    return body.split(b"\n\n", 1)[0] + b"\n"


@pytest.mark.parametrize("cmd", COMMANDS, ids=["mta-inject", "sendmail"])
def test_fullname_makes_the_missing_from(root, cmd):
    p = run([*cmd, "-F", "Joe Q. Public", "-f", "joe@mx.test", "r@x.test"], root,
            b"Subject: hi\n\nbody\n")
    assert p.returncode == 0, p.stderr
    _, body, _ = only_message(root)
    assert b'\nFrom: "Joe Q. Public" <joe@mx.test>\n' in header(body)


@pytest.mark.parametrize("cmd", COMMANDS, ids=["mta-inject", "sendmail"])
def test_fullname_never_replaces_a_given_from(root, cmd):
    p = run([*cmd, "-FJoe Q. Public", "-f", "joe@mx.test", "r@x.test"], root,
            b"From: Real Name <real@mx.test>\nSubject: hi\n\nbody\n")
    assert p.returncode == 0, p.stderr
    _, body, _ = only_message(root)
    assert header(body).count(b"\nFrom: ") == 1
    assert b"\nFrom: Real Name <real@mx.test>\n" in header(body) and b"Joe" not in body


@pytest.mark.parametrize("cmd", COMMANDS, ids=["mta-inject", "sendmail"])
@pytest.mark.parametrize("flag", ["-i", "-oi"])
def test_lone_dot_does_not_end_the_message(root, cmd, flag):
    text = b"Subject: dots\n\nfirst\n.\nsecond\n..\nthird\n.\n"
    p = run([*cmd, flag, "-f", "s@mx.test", "r@x.test"], root, text)
    assert p.returncode == 0, p.stderr
    _, body, rcpts = only_message(root)
    assert body.endswith(b"\n\nfirst\n.\nsecond\n..\nthird\n.\n")
    assert rcpts == ["r@x.test"]


@pytest.mark.parametrize("cmd", COMMANDS, ids=["mta-inject", "sendmail"])
def test_take_recipients_from_to_cc_bcc_and_strip_bcc(root, cmd):
    text = (b"To: Ann <ann@a.test>\n"
            b"Cc: bob@b.test,\n \"Carol C.\" <carol@c.test>\n"
            b"Bcc: hidden@h.test, deep@h.test\n"
            b"Subject: cc\n\nbody mentions nothing\n")
    p = run([*cmd, "-t", "-f", "s@mx.test"], root, text)
    assert p.returncode == 0, p.stderr
    m, body, rcpts = only_message(root)
    assert sorted(rcpts) == ["ann@a.test", "bob@b.test", "carol@c.test", "deep@h.test",
                             "hidden@h.test"]
    assert m["recipients"]["pending"] == 5
    head = header(body)
    assert b"\nCc: bob@b.test,\n \"Carol C.\" <carol@c.test>\n" in head  # kept as given
    assert b"Bcc" not in body and b"hidden" not in body and b"deep" not in body
