"""Progress reports: plain lines at most every N steps and T seconds, a live bar on a terminal."""

import io

import pytest

from mosbench.errors import MosbenchError
from mosbench.progress import Progress, duration, reporting


class Clock:
    """A clock the test moves by hand."""

    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now


def plain(clock, **kwargs):
    out = io.StringIO()
    return out, Progress("train epoch 1/3", 100, unit="step", stream=out, live=False,
                         clock=clock, **kwargs)


def test_a_line_comes_when_both_the_steps_and_the_seconds_have_passed():
    clock = Clock()
    out, progress = plain(clock, every_steps=10, every_s=30)
    for step in range(1, 10):  # seconds pass, too few steps
        clock.now += 10
        progress.update(step)
    assert out.getvalue() == ""
    progress.update(10)  # 10 steps and 100 s: a line
    assert out.getvalue().count("\n") == 1
    for step in range(11, 40):  # many steps, 29 s: none
        clock.now += 1
        progress.update(step)
    assert out.getvalue().count("\n") == 1
    clock.now += 1
    progress.update(40)
    assert progress.lines == 2


def test_a_training_line_says_where_how_fast_and_how_long_is_left():
    clock = Clock()
    out, progress = plain(clock, every_steps=1, every_s=0, approximate=True,
                          more_label="run (3 epochs)")
    clock.now += 60
    progress.update(25, tokens=120_000, fraction=0.25, fields=[("loss", "4.321")], more=2)
    line = out.getvalue().strip()
    assert line == ("train epoch 1/3 | step 25/~100 25% | loss 4.321 | 2,000 tok/s | "
                    "elapsed 0:01:00 | ETA 0:03:00, run (3 epochs) 0:11:00")


def test_a_resumed_loop_counts_the_time_it_ran_before():
    clock = Clock()
    out, progress = plain(clock, every_steps=1, every_s=0, elapsed_before=50)
    clock.now += 10
    progress.update(50)  # half done after 60 s in all: 60 s left
    assert "elapsed 0:01:00 | ETA 0:01:00" in out.getvalue()


def test_on_a_terminal_the_bar_is_redrawn_in_place_and_cleared_at_the_end():
    clock, out = Clock(), io.StringIO()
    progress = Progress("evaluate test", 4, stream=out, live=True, clock=clock)
    for window in range(1, 5):
        clock.now += 1
        progress.update(window, tokens=100 * window)
    written = out.getvalue()
    assert "\n" not in written and written.count("\r") == 4
    assert "[##########..........] 50%" in written and "100%" in written
    progress.close()
    assert out.getvalue().endswith("\r\x1b[K") and progress.lines == 0


def test_settings_come_from_the_environment_and_bad_ones_are_named(monkeypatch):
    monkeypatch.setenv("MOSBENCH_PROGRESS_STEPS", "7")
    monkeypatch.setenv("MOSBENCH_PROGRESS_S", "0.5")
    progress = Progress("x", stream=io.StringIO(), live=False)
    assert (progress.every_steps, progress.every_s) == (7, 0.5)
    monkeypatch.setenv("MOSBENCH_PROGRESS_S", "soon")
    with pytest.raises(MosbenchError, match="MOSBENCH_PROGRESS_S='soon'"):
        Progress("x")


def test_reporting_passes_every_item_through_and_reports_them(monkeypatch, capsys):
    monkeypatch.setenv("MOSBENCH_PROGRESS_STEPS", "2")
    monkeypatch.setenv("MOSBENCH_PROGRESS_S", "0")
    items = [(None, [1, 2, 3])] * 5
    assert list(reporting(iter(items), "dynamic evaluation (test)", 5,
                          tokens_per_item=lambda item: len(item[1]), unit="segment")) == items
    lines = capsys.readouterr().err.splitlines()  # stderr is no terminal under pytest
    assert [line.split(" | ")[1] for line in lines] == [
        "segment 2/5 40%", "segment 4/5 80%"]
    assert all(line.startswith("dynamic evaluation (test) | ") for line in lines)


def test_durations_read_as_hours_minutes_seconds():
    assert duration(3725.2) == "1:02:05"
    assert duration(59.6) == "0:01:00"
    assert duration(None) == "?"
