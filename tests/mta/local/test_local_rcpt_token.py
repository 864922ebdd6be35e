"""Local delivery of a post with the private X-Mta-Rcpt-Token field: stripped, token filled."""

from __future__ import annotations

import hashlib
import sys
from pathlib import Path

from local_helpers import DOMAIN, make_maildir, write_qmail
from mta.interfaces import Delivered
from mta.local import deliver_local
from mta.local.personal import CHUNK, personal_copy
from mta.rcpt_token import token_for

KEY = hashlib.sha256(b"list").digest()
PH = b"@@RCPT_TOKEN@@"
HEAD = (b"X-Mta-Rcpt-Token: " + KEY.hex().encode() + b" " + PH + b"\n"
        b"List-Unsubscribe: <https://l.test/u?l=a&n=1&" + PH + b">\nSubject: s\n\n")


def _post(tmp_path: Path, body: bytes) -> Path:
    path = tmp_path / "post"
    path.write_bytes(HEAD + body)
    return path


def _expected(address: str, body: bytes) -> bytes:
    fill = f"a={address}&t={token_for(KEY, address)}".encode()
    return HEAD.split(b"\n", 1)[1].replace(PH, fill) + body


def test_maildir_mbox_and_program_see_the_final_header(tmp_path, alias_dir, make_job):
    body = b"quoting " + PH + b" in the body is left alone\n"
    post = _post(tmp_path, body)
    make_maildir(alias_dir / "jo-box")
    write_qmail(alias_dir, ".qmail-jo", "./jo-box/\n./jo.mbox\n"
                f"|{sys.executable} -c 'import sys,shutil; shutil.copyfileobj(sys.stdin.buffer, "
                f"open(\"piped\", \"wb\"))'\n")
    out = deliver_local(make_job("jo", message_path=post)).outcome
    assert isinstance(out, Delivered), out
    want = _expected(f"jo@{DOMAIN}", body)
    (stored,) = list((alias_dir / "jo-box" / "new").iterdir())
    assert stored.read_bytes().endswith(want)
    assert (alias_dir / "jo.mbox").read_bytes().rstrip(b"\n").endswith(want.rstrip(b"\n"))
    assert (alias_dir / "piped").read_bytes() == want
    for data in (stored.read_bytes(), (alias_dir / "jo.mbox").read_bytes()):
        assert b"x-mta-rcpt-token" not in data.lower()


def test_forward_copy_is_stripped_and_token_recipient_is_used(tmp_path, make_job, alias_dir,
                                                              injector):
    post = _post(tmp_path, b"hi\n")
    write_qmail(alias_dir, ".qmail-fw", "&elsewhere@remote.test\n")
    job = make_job("fw", message_path=post, token_recipient="Fw@Virtual.Test")
    assert isinstance(deliver_local(job).outcome, Delivered)
    ((_, rcpts, message),) = injector.calls
    assert rcpts == ("elsewhere@remote.test",)
    assert b"x-mta-rcpt-token" not in message.lower()
    assert message.endswith(_expected("Fw@Virtual.Test", b"hi\n"))  # as queued; the token ignores case


def test_plain_message_is_delivered_from_the_stored_file(message):
    with personal_copy(message, "a@b.test") as path:
        assert path == message


def test_big_body_is_copied_in_pieces_and_the_copy_removed(tmp_path):
    body = (b"x" * 1000 + b"\n") * (3 * CHUNK // 1000)
    post = _post(tmp_path, body)
    with personal_copy(post, "a@b.test") as path:
        assert path != post
        assert path.read_bytes() == _expected("a@b.test", body)
    assert not path.exists()
