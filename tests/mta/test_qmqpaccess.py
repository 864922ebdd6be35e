"""control/qmqpaccess: loopback only without the file; with it, fail closed."""

from mta.access import LOOPBACK_ONLY, Action, load_access


def rules_for(tmp_path, text=None):
    (tmp_path / "control").mkdir(exist_ok=True)
    if text is not None:
        (tmp_path / "control" / "qmqpaccess").write_text(text)
    return load_access(tmp_path, "qmqpaccess", LOOPBACK_ONLY)


def test_without_the_file_loopback_only(tmp_path):
    rules = rules_for(tmp_path)
    assert rules.lookup("127.0.0.1") is Action.ALLOW and rules.lookup("127.9.9.9") is Action.ALLOW
    assert rules.lookup("::1") is Action.ALLOW
    assert rules.lookup("192.0.2.1") is Action.DENY and rules.lookup("2001:db8::1") is Action.DENY


def test_a_client_no_rule_names_is_denied(tmp_path):
    rules = rules_for(tmp_path, "10.1.0.0/16:allow\n127.0.0.1:deny\n")
    assert rules.lookup("10.1.2.3") is Action.ALLOW
    assert rules.lookup("127.0.0.1") is Action.DENY
    assert rules.lookup("127.0.0.2") is Action.DENY  # smtpaccess would allow it
    assert rules.lookup("192.0.2.1") is Action.DENY
    assert rules_for(tmp_path, ":allow\n").lookup("192.0.2.1") is Action.ALLOW  # explicit


def test_smtpaccess_still_lets_unmatched_clients_in(tmp_path):
    (tmp_path / "control").mkdir()
    (tmp_path / "control" / "smtpaccess").write_text("10.1.0.0/16:relay\n")
    assert load_access(tmp_path).lookup("192.0.2.1") is Action.ALLOW
