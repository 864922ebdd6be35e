"""Mailing lists under privilege separation (root only): ezlist run by root acts as the
local user, and a list post goes from local delivery (mtal, who may not write the queue)
through the queue owner's socket to every subscriber, with its VERP sender."""

import os
import pwd
import smtplib
import subprocess

import pytest

from sink import Sink
from test_privsep import BIN, free_port, public_dir, stop_group, wait_for  # noqa: F401 (fixture)

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root: creates users, switches uids")


def test_list_post_under_privsep_reaches_every_subscriber(public_dir):  # noqa: F811
    env = {k: v for k, v in os.environ.items() if k != "MTA_PRIVSEP"}
    root = public_dir / "inst"
    mta, ezlist = [str(BIN / "mta"), "--root", str(root)], [str(BIN / "ezlist"), "--root", str(root)]
    subprocess.run(mta + ["init", "--me", "local.test", "--spare-files", "0"], check=True, env=env,
                   capture_output=True, timeout=120)
    users = dict(line.split(":") for line in (root / "control" / "users").read_text().split())
    mtal = pwd.getpwnam(users["local"])
    subprocess.run(ezlist + ["make", "news@local.test"], check=True, env=env,
                   capture_output=True, timeout=60)
    made = [root / "lists" / "news", root / "lists" / "news" / "subscribers.db",
            root / "alias" / ".qmail-news-default"]
    assert [p.stat().st_uid for p in made] == [mtal.pw_uid] * 3  # root acted as mtal
    rcpts = [f"u{i}@remote.test" for i in range(5)]
    subprocess.run(ezlist + ["sub", "news", *rcpts], check=True, env=env,
                   capture_output=True, timeout=60)
    with Sink("127.0.1.91") as sink:
        (root / "control" / "smtproutes").write_text(f"remote.test:127.0.1.91:{sink.port}\n")
        port = free_port()
        p = subprocess.Popen(mta + ["start", "--smtp", f"127.0.0.1:{port}"], env=env,
                             start_new_session=True)
        try:
            def send_post() -> bool:
                try:
                    with smtplib.SMTP("127.0.0.1", port, timeout=30) as s:
                        s.sendmail("u0@remote.test", ["news@local.test"],
                                   b"Subject: hello\r\n\r\nfirst post\r\n")
                    return True
                except OSError:
                    return False
            wait_for(send_post, 30, "the SMTP listener to take the post")
            sink.wait_for(5, 60)
            got = sorted((r, m.sender) for m in sink.messages for r in m.rcpts)
            assert got == [(r, f"news-return-1-{r.replace('@', '=')}@local.test") for r in rcpts]
        finally:
            stop_group(p)
