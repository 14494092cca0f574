"""The recording watchdog behaves like the Linux device where the agent's safety depends on it."""

from fake_watchdog import RecordingWatchdog


def test_keepalive_moves_the_reset_and_never_beyond_the_configured_timeout():
    wd = RecordingWatchdog(10)
    wd.arm()
    wd.keepalive(30)
    assert wd.timeout == 10
    wd.keepalive(4)
    assert wd.timeout == 4 and wd.fires_at == wd.fed_at + 4


def test_close_without_magic_counts_as_a_keepalive_and_disarm_stops_it():
    wd = RecordingWatchdog(10)
    wd.arm()
    before = wd.fed_at
    wd.abandon()
    assert wd.fed_at >= before and wd.fires_at == wd.fed_at + 10
    wd2 = RecordingWatchdog(10)
    wd2.arm()
    wd2.disarm()
    assert wd2.fires_at is None and wd2.ops() == ["arm", "disarm"]


def test_shorten_only_shortens():
    wd = RecordingWatchdog(10)
    wd.arm()
    wd.shorten(3)
    wd.shorten(7)
    assert wd.timeout == 3 and wd.ops() == ["arm", "shorten"]
