"""Which instance a command uses: ``--root DIR``, else ``$MTA_ROOT``, else ``./var``.

Three real instances: A (given with --root), B (in MTA_ROOT) and C (./var under the
working directory). Each command must pick the first that applies. The shims
(``sendmail``, ``qmail-queue``) take ``--root DIR`` as their first argument.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

BIN = Path(sys.executable).parent


def _env(mta_root=None):
    env = {k: v for k, v in os.environ.items() if k != "MTA_ROOT"}
    if mta_root is not None:
        env["MTA_ROOT"] = str(mta_root)
    return env


def _run(argv, cwd, mta_root=None, stdin=b"", stdout=subprocess.PIPE):
    return subprocess.run([str(BIN / argv[0]), *argv[1:]], input=stdin, cwd=cwd,
                          env=_env(mta_root), stdout=stdout, stderr=subprocess.PIPE, timeout=60)


@pytest.fixture
def three(tmp_path):
    """(A, B, cwd) with instances A, B and cwd/var (= C)."""
    cwd = tmp_path / "work"
    cwd.mkdir()
    roots = {"A": tmp_path / "a", "B": tmp_path / "b", "C": cwd / "var"}
    for name, r in roots.items():
        p = _run(["mta", "--root", str(r), "init", "--me", f"{name.lower()}.test",
                  "--spare-files", "0"], tmp_path)
        assert p.returncode == 0, p.stderr
    return roots["A"], roots["B"], cwd


def _instance_shown(p) -> str:
    assert p.returncode == 0, p.stderr
    line = p.stdout.decode().splitlines()[0]
    assert line.startswith("instance: ")
    return line[len("instance: "):]


def test_mta_root_option_beats_environment_beats_dot_var(three):
    a, b, cwd = three
    assert _instance_shown(_run(["mta", "--root", str(a), "showctl"], cwd, b)) == str(a.resolve())
    assert _instance_shown(_run(["mta", "showctl"], cwd, b)) == str(b.resolve())
    assert _instance_shown(_run(["mta", "showctl"], cwd)) == str((cwd / "var").resolve())


def _queued(root: Path) -> list[dict]:
    p = _run(["mta", "--root", str(root), "queue", "--json"], root.parent)
    assert p.returncode == 0, p.stderr
    return [json.loads(line) for line in p.stdout.splitlines()]


def _senders(a, b, cwd) -> tuple[list, list, list]:
    return tuple([m["sender"] for m in _queued(r)] for r in (a, b, cwd / "var"))


def test_sendmail_root_argument_then_environment_then_dot_var(three):
    a, b, cwd = three
    msg = b"Subject: where\n\nbody\n"
    for argv, mta_root in ((["--root", str(a), "-f", "one@x.test"], b),
                           ([f"--root={a}", "-f", "two@x.test"], b),
                           (["-f", "three@x.test"], b),
                           (["-f", "four@x.test"], None)):
        p = _run(["sendmail", *argv, "rcpt@y.test"], cwd, mta_root, msg)
        assert p.returncode == 0, p.stderr
    assert _senders(a, b, cwd) == (["one@x.test", "two@x.test"], ["three@x.test"],
                                   ["four@x.test"])


def _qmail_queue(args, cwd, mta_root, sender: str) -> int:
    r, w = os.pipe()
    env_bytes = b"F" + sender.encode() + b"\0Trcpt@y.test\0\0"
    os.write(w, env_bytes)
    os.close(w)
    try:
        p = _run(["qmail-queue", *args], cwd, mta_root, b"Subject: q\n\nbody\n", stdout=r)
    finally:
        os.close(r)
    assert p.returncode != 0 or p.stderr == b"", p.stderr
    return p.returncode


def test_qmail_queue_root_argument_then_environment_then_dot_var(three):
    a, b, cwd = three
    assert _qmail_queue(["--root", str(a)], cwd, b, "one@x.test") == 0
    assert _qmail_queue([f"--root={a}"], cwd, b, "two@x.test") == 0
    assert _qmail_queue([], cwd, b, "three@x.test") == 0
    assert _qmail_queue([], cwd, None, "four@x.test") == 0
    assert _qmail_queue(["ignored", "arguments"], cwd, None, "five@x.test") == 0
    assert _senders(a, b, cwd) == (["one@x.test", "two@x.test"], ["three@x.test"],
                                   ["four@x.test", "five@x.test"])


def test_qmail_queue_root_argument_naming_no_instance_is_61(three, tmp_path):
    _, b, cwd = three
    assert _qmail_queue(["--root", str(tmp_path / "nowhere")], cwd, b, "x@x.test") == 61
    assert _queued(b) == []
