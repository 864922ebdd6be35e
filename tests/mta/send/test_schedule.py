from mta.send.schedule import expired, next_retry


def test_remote_schedule_matches_qmail():
    birth = 1000.0
    # qmail: remote attempts at birth + (20k)^2 for k = 1, 2, 3 ...
    assert next_retry(birth, birth, remote=True) == birth + 400
    assert next_retry(birth, birth + 400, remote=True) == birth + 1600
    assert next_retry(birth, birth + 1600, remote=True) == birth + 3600
    assert next_retry(birth, birth + 10, remote=True) == birth + 23 ** 2


def test_local_schedule_matches_qmail():
    assert next_retry(0, 0, remote=False) == 100
    assert next_retry(0, 100, remote=False) == 400


def test_expiry_is_strictly_after_lifetime():
    assert not expired(0, 604800, 604800)
    assert expired(0, 604801, 604800)
