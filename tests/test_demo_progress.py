"""The demo's poll callbacks (one line per change, no carriage returns in logs) and the
catalogue it replays."""

import io

import pandas as pd
from rich.console import Console

from reco.demo import known_catalogue, status_printer


def test_status_printer_prints_changes_only_as_lines_when_not_a_terminal() -> None:
    out = io.StringIO()
    show = status_printer(Console(file=out, force_terminal=False), "  lag ")
    for lag in (5, 5, 3, 0, 0):
        show(lag)
    assert out.getvalue() == "  lag 5\n  lag 3\n  lag 0\n"


def test_status_printer_rewrites_one_line_on_a_terminal() -> None:
    out = io.StringIO()
    show = status_printer(Console(file=out, force_terminal=True, color_system=None), "  run ")
    show("queued")
    show("running")
    assert out.getvalue() == "  run queued\r  run running\r"


def test_the_replayed_catalogue_dates_items_by_the_history_only() -> None:
    items = pd.DataFrame({"item_id": ["a", "b", "c"], "created_at": [5, 1, 1],
                          "title": ["A", "B", "C"]})
    # b's first rating (at 1) is held out; c is only in held-out events
    history = pd.DataFrame({"item_id": ["a", "b", "b"], "timestamp": [5, 7, 9]})
    known = known_catalogue(items, history)
    assert known[["item_id", "created_at", "title"]].values.tolist() == [
        ["a", 5, "A"], ["b", 7, "B"]]
