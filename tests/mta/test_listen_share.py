"""Listener processes sharing a port split the connection caps between them."""

from mta.instance import init_instance
from mta.listen import smtp_policy


def test_share_splits_the_connection_caps_rounding_up(tmp_path):
    root = tmp_path / "var"
    init_instance(root, me="local.test")
    one = smtp_policy(root)
    two, three = smtp_policy(root, share=2), smtp_policy(root, share=3)
    assert (two.max_connections, two.max_per_ip) == (-(-one.max_connections // 2),
                                                     -(-one.max_per_ip // 2))
    assert three.max_per_ip * 3 >= one.max_per_ip > (three.max_per_ip - 1) * 3
    assert two.max_recipients == one.max_recipients  # only the caps change


def test_steered_listeners_keep_the_whole_per_client_cap(tmp_path):
    root = tmp_path / "var"
    init_instance(root, me="local.test")
    one, steered = smtp_policy(root), smtp_policy(root, share=2, steered=True)
    assert steered.max_per_ip == one.max_per_ip  # one client always reaches one process
    assert steered.max_connections == -(-one.max_connections // 2)
