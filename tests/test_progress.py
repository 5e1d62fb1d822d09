"""biomatch.progress.CountProgress: the log lines a long pass prints when stderr is not a terminal."""

from __future__ import annotations

import re
import threading

from biomatch.progress import CountProgress


def _counts(err: str, desc: str) -> list[int]:
    return [int(m) for m in re.findall(rf"^  {desc} (\d+)/\d+ \(\d+ s\)$", err, flags=re.M)]


def test_a_line_every_n_items_and_at_the_end(capsys):
    with CountProgress(7, "things", 3) as bar:
        for _ in range(7):
            bar.update(1)
    assert _counts(capsys.readouterr().err, "things") == [3, 6, 7]


def test_updates_of_several_items_print_when_they_cross_a_multiple(capsys):
    bar = CountProgress(10, "things", 4)
    for n in (3, 3, 3, 1):  # 3, 6 (crosses 4), 9 (crosses 8), 10 (the end)
        bar.update(n)
    assert _counts(capsys.readouterr().err, "things") == [6, 9, 10]


def test_disabled_prints_nothing(capsys):
    bar = CountProgress(5, "things", 1, enabled=False)
    bar.update(5)
    assert capsys.readouterr().err == ""


def test_workers_sharing_one_count_lose_no_update(capsys):
    bar = CountProgress(2000, "things", 500)

    def work() -> None:
        for _ in range(1000):
            bar.update(1)

    threads = [threading.Thread(target=work) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert bar.done == 2000
    assert _counts(capsys.readouterr().err, "things") == [500, 1000, 1500, 2000]
