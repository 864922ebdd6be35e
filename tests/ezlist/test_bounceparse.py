from pathlib import Path

from ezlist.bounceparse import failed_addresses, is_ignorable, is_qsbmf

FIX = Path(__file__).parent / "fixtures"


def read(name: str) -> bytes:
    return (FIX / name).read_bytes()


def test_qsbmf():
    raw = read("bounce-qsbmf.eml")
    assert is_qsbmf(raw) and not is_ignorable(raw)
    # the copied message after the break paragraph is not parsed
    assert failed_addresses(raw) == ["Carol@other.test", "dave@other.test"]


def test_qsbmf_with_crlf():
    raw = read("bounce-qsbmf.eml").replace(b"\n", b"\r\n")
    assert failed_addresses(raw) == ["Carol@other.test", "dave@other.test"]


def test_dsn_failed_groups_only():
    raw = read("bounce-dsn.eml")
    assert not is_qsbmf(raw)
    assert not is_ignorable(raw)  # despite Postfix's Auto-Submitted: auto-replied
    # Original-Recipient preferred; the delayed group is not a failure
    assert failed_addresses(raw) == ["Frank@far.test", "heidi@far.test"]


def test_weed_ignores_delays_successes_and_autoreplies():
    assert is_ignorable(read("delay-dsn.eml"))
    assert failed_addresses(read("delay-dsn.eml")) == []
    assert is_ignorable(read("success-notice.eml"))
    vacation = b"From: x@y.test\nSubject: Out of office\nAuto-Submitted: auto-replied\n\nAway.\n"
    assert is_ignorable(vacation) and failed_addresses(vacation) == []
    assert is_ignorable(b"Subject: hi\nPrecedence: junk\n\nx\n")


def test_garbage_is_not_a_bounce_and_does_not_raise():
    for raw in [b"", b"\n\n", b"Subject: x\n\nHi. This is not it\n", b"\xff\xfe\x00garbage",
                b"Content-Type: multipart/report; boundary=x\n\n--x\n", b"Hi. This is the\n\n<>:\n"]:
        assert failed_addresses(raw) == []
        assert isinstance(is_ignorable(raw), bool)
