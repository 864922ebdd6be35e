"""mta init / showctl / inject / queue / stat and the sendmail shim, run as real commands."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

BIN = Path(sys.executable).parent


def run(args, root, stdin=b"", env=None):
    e = dict(os.environ, MTA_ROOT=str(root), **(env or {}))
    return subprocess.run([str(BIN / args[0]), *args[1:]], input=stdin, capture_output=True,
                          env=e, timeout=60)


@pytest.fixture
def root(tmp_path):
    r = tmp_path / "inst"
    # no spare files here (tests/harness.py says why); the stock test makes its own
    p = run(["mta", "--root", str(r), "init", "--me", "mx.test", "--spare-files", "0"], r)
    assert p.returncode == 0, p.stderr
    return r


def queued(root):
    p = run(["mta", "queue", "--json"], root)
    assert p.returncode == 0, p.stderr
    return [json.loads(line) for line in p.stdout.splitlines()]


def test_init_layout_and_idempotence(root):
    for sub in ("control", "queue", "alias", "lists", "log"):
        assert (root / sub).is_dir()
    assert (root / "control" / "me").read_text() == "mx.test\n"
    p = run(["mta", "--root", str(root), "init"], root)
    assert p.returncode == 0 and b"nothing to do" in p.stdout
    assert (root / "control" / "me").read_text() == "mx.test\n"


def test_init_refuses_foreign_folder(tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    p = run(["mta", "--root", str(tmp_path), "init"], tmp_path)
    assert p.returncode != 0 and b"not an instance" in p.stderr
    assert sorted(os.listdir(tmp_path)) == ["notes.txt"]


def test_root_from_environment_then_dot_var(root, tmp_path):
    p = run(["mta", "showctl"], root)  # MTA_ROOT set by run()
    assert p.returncode == 0 and b"me: mx.test" in p.stdout
    env = {k: v for k, v in os.environ.items() if k != "MTA_ROOT"}
    p = subprocess.run([str(BIN / "mta"), "showctl"], cwd=root.parent, env=env,
                       capture_output=True, timeout=60)
    assert p.returncode != 0 and b"control/me" in p.stderr  # ./var has no instance


def test_showctl_reports_defaults_and_values(root):
    (root / "control" / "concurrencyremote").write_text("400\n")
    out = run(["mta", "showctl"], root).stdout.decode()
    assert "concurrencyremote: 400 connections" in out
    assert "concurrencylocal: 10 deliveries (default)" in out
    assert "queuelifetime: 604800 seconds (default)" in out


def test_showctl_names_bad_file_and_line(root):
    (root / "control" / "timeoutremote").write_text("soon\n")
    p = run(["mta", "showctl"], root)
    assert p.returncode != 0
    assert b"control/timeoutremote line 1" in p.stderr


def test_inject_adds_headers_and_strips_bcc(root):
    msg = b"To: a@x.test\nBcc: hidden@y.test\nSubject: hi\n\nbody\n"
    p = run(["mta", "inject", "-f", "me@mx.test", "-t"], root, msg)
    assert p.returncode == 0, p.stderr
    [m] = queued(root)
    assert m["sender"] == "me@mx.test" and m["recipients"]["pending"] == 2
    body = (root / "queue" / "mess" / str(m["id"])).read_bytes()
    assert body.startswith(b"Received: (qmail ")
    assert b"\nMessage-ID: <" in body and b"@mx.test>" in body
    assert b"\nDate: " in body and b"\nFrom: me@mx.test\n" in body
    assert b"Bcc" not in body and b"hidden" not in body
    assert body.endswith(b"\n\nbody\n")


def test_inject_without_recipients_is_permanent_error(root):
    p = run(["mta", "inject"], root, b"Subject: x\n\nno one\n")
    assert p.returncode == 100 and b"no recipients" in p.stderr
    assert queued(root) == []


def test_sendmail_shim(root):
    msg = b"From: Someone <s@mx.test>\r\nTo: r1@x.test, R2 <r2@y.test>\r\n\r\nhello\r\n.\r\nmore\r\n"
    p = run(["sendmail", "-oi", "-fbounces@mx.test", "-t", "extra@z.test"], root, msg)
    assert p.returncode == 0, p.stderr
    [m] = queued(root)
    assert m["sender"] == "bounces@mx.test" and m["recipients"]["pending"] == 3
    body = (root / "queue" / "mess" / str(m["id"])).read_bytes()
    assert b"\r\n" not in body and b"\nhello\n.\nmore\n" in body
    p = run(["sendmail", "-bs"], root)
    assert p.returncode == 100 and b"unsupported option -bs" in p.stderr


def test_stat_counts(root):
    run(["mta", "inject", "-f", "me@mx.test", "a@x.test", "b@x.test"], root, b"\nhi\n")
    out = run(["mta", "stat"], root).stdout.decode()
    assert "messages in queue: 1" in out and "recipients to deliver: 2" in out


def _spares(root):
    free = root / "queue" / "free"
    return [os.lstat(free / name) for name in os.listdir(free)]


def test_init_stocks_the_new_queue_with_spare_files(tmp_path):
    from mta.queue.free import FREE_CAP

    root = tmp_path / "inst"
    p = run(["mta", "--root", str(root), "init", "--me", "mx.test"], root)
    assert p.returncode == 0 and f"({FREE_CAP} spare files)".encode() in p.stdout
    spares = _spares(root)
    assert len(spares) == FREE_CAP
    assert all(st.st_size == 0 and st.st_nlink == 1 and st.st_uid == os.geteuid()
               and not st.st_mode & 0o7777 & ~0o640 for st in spares)
    p = run(["mta", "--root", str(root), "init"], root)  # an existing queue: none added
    assert p.returncode == 0 and len(_spares(root)) == FREE_CAP
    few = tmp_path / "few"
    p = run(["mta", "--root", str(few), "init", "--me", "mx.test", "--spare-files", "3"], few)
    assert p.returncode == 0 and b"(3 spare files)" in p.stdout
    assert len(_spares(few)) == 3
    p = run(["mta", "--root", str(tmp_path / "bad"), "init", "--spare-files", "-1"], tmp_path)
    assert p.returncode == 2 and b"--spare-files" in p.stderr
