"""``smtpgreetdelay``, the one fractional control file: parsed, validated, defaulted."""

import pytest

from mta.control import ControlError, load_control


def instance(tmp_path, delay=None):
    (tmp_path / "control").mkdir()
    (tmp_path / "control" / "me").write_text("mx.local.test\n")
    if delay is not None:
        (tmp_path / "control" / "smtpgreetdelay").write_text(delay)
    return tmp_path


def test_default_is_no_delay(tmp_path):
    ctl = load_control(instance(tmp_path))
    assert ctl.smtpgreetdelay == 0.0
    assert ("smtpgreetdelay", 0.0, True) in [(s.name, v, d) for s, v, d in ctl.settings()]


@pytest.mark.parametrize("text, value", [("0.5\n", 0.5), ("2\n", 2.0), (".25", 0.25), ("3.", 3.0)])
def test_fractional_seconds(tmp_path, text, value):
    assert load_control(instance(tmp_path, text)).smtpgreetdelay == value


@pytest.mark.parametrize("text", ["soon\n", "-1\n", "1e3\n", ".\n", "\n", "1.2.3\n"])
def test_bad_values_name_the_file(tmp_path, text):
    with pytest.raises(ControlError, match="control/smtpgreetdelay line 1"):
        load_control(instance(tmp_path, text))
