import pytest

from ezlist.headers import (field_name, field_value, join_fields, line_ending, make_field,
                            parse_fields, remove_fields, split_message, values_of)


def test_split_and_rejoin_is_byte_exact():
    for raw in [b"A: 1\r\nB: 2\r\n folded\r\n\r\nbody\r\n\r\nmore", b"A: 1\n\n", b"A: 1",
                b"\nbody only\n", b"", b"A: 1\nbad line\n\tcont\n\nb"]:
        header, sep, body = split_message(raw)
        assert header + sep + body == raw
        assert b"".join(parse_fields(header)) == header


def test_fields_names_values():
    header = b"Subject: hi\r\n there\r\nX-Y :  v \r\nnot a field\r\n"
    fields = parse_fields(header)
    assert fields[0] == b"Subject: hi\r\n there\r\n"
    assert [field_name(f) for f in fields] == [b"subject", b"x-y", b""]
    assert field_value(fields[0]) == b"hi there" and field_value(fields[1]) == b"v"
    assert values_of(fields, b"SUBJECT") == [b"hi there"]
    assert remove_fields(fields, {b"x-y"}) == [fields[0], fields[2]]
    assert join_fields([b"A: 1"], b"\r\n") == b"A: 1\r\n"


def test_line_ending_and_injection():
    assert line_ending(b"A: 1\r\n") == b"\r\n" and line_ending(b"A: 1\n") == b"\n"
    assert line_ending(b"") == b"\n"
    assert make_field("List-Id", "<a.b>", b"\r\n") == b"List-Id: <a.b>\r\n"
    for bad in ["x\r\nBcc: evil@x", "x\nBcc: y", "x\0"]:
        with pytest.raises(ValueError):
            make_field("Subject", bad, b"\n")
