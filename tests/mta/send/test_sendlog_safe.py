"""qmail-send's log lines stay one line of printable text whatever a remote said (logsafe)."""

from mta.send.log import safe


def test_ascii_text_spaces_controls_and_percent_become_underscores_newline_a_slash():
    assert safe("250 ok\nqueued as 12 %x\t!") == "250_ok/queued_as_12__x_!"


def test_characters_past_ascii_become_underscores():
    assert safe("caf\u00e9 \u2603\nz") == "caf___/z"
