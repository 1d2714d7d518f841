"""The demo's poll callbacks: one line per change, no carriage returns in logs."""

import io

from rich.console import Console

from reco.demo import status_printer


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
