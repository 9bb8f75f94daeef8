"""Progress outside a terminal: lines a person reads in a log file, not a bar redrawn with carriage returns."""

import logging

from leadre import runtime


def test_outside_a_terminal_progress_is_a_log_line_every_few_seconds(monkeypatch, caplog):
    readings = iter([0.0, 1.0, 4.0, 11.0, 12.0])  # start, then one reading per update
    monkeypatch.setattr(runtime, "interactive", lambda: False)
    with caplog.at_level(logging.INFO, logger="leadre.progress"):
        with runtime.progress(400, "encode ads", "text", every_seconds=10, clock=lambda: next(readings)) as bar:
            for _ in range(4):
                bar.update(100)
    lines = [r.getMessage() for r in caplog.records]
    # 11 s is past the 10 s mark; the end always gets its line; 1 s and 4 s get none
    assert lines == ["encode ads: 300/400 texts (75%), 27.3 texts/s, 4 s left",
                     "encode ads: 400/400 texts (100%), 33.3 texts/s, 0 s left"]
    assert not any("\r" in line for line in lines)


def test_at_a_terminal_progress_is_a_tqdm_bar(monkeypatch):
    from tqdm.auto import tqdm

    monkeypatch.setattr(runtime, "interactive", lambda: True)
    with runtime.progress(3, "encode ads", "text") as bar:
        assert isinstance(bar, tqdm)
