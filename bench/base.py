"""What every scenario is made of: its declaration (``Scenario``), its rows, one ``measure``
for a case, and the cells and targets its report shows.

A scenario module declares ``SCENARIOS = [Scenario(...)]``: its name (for ``--scenarios``
and the JSON), its number and title (for progress and the report), the function that runs
it (``run(bench, rows)`` appending rows to the caller's list, so that partial results
survive Ctrl-C), its table's columns, its command-line options with their full and quick
values, and the targets it checks. bench/registry.py lists the modules; the command and
the report are made from their declarations.

A row is a dict with ``key``, ``label``, ``status`` (``ok``, ``skipped`` with a
``reason``, or ``failed`` with the error) and the scenario's numbers. A peer that cannot
be had is a ``skipped`` row: nothing is dropped silently.
"""

from collections.abc import Callable
from dataclasses import dataclass, field


class Skip(Exception):
    """A peer that cannot be had: the row is reported as skipped with this reason."""


def row(key, label, **fields):
    return {"key": key, "label": label, "status": "ok", **fields}


def skipped(key, label, reason):
    return {"key": key, "label": label, "status": "skipped", "reason": reason}


def failed(key, label, error):
    return {"key": key, "label": label, "status": "failed", "reason": str(error)[:2000]}


def measure(bench, rows, key, label, run, report=None, **extra):
    """One case: ``run()`` returns the row's numbers; appends the row (``skipped`` when it
    raises Skip, ``failed`` on any other error), says the outcome (``report(row)`` when
    measured) and stops the processes started for the case. ``extra``: fields on the row
    whatever its status. Several rows from one run: ``key`` and ``label`` as tuples and
    ``run()`` returning one dict of numbers for each. Returns the rows appended."""
    keys, labels = (key, label) if isinstance(key, tuple) else ((key,), (label,))
    try:
        results = run()
        made = [row(k, text, **{**extra, **fields})
                for k, text, fields in zip(keys, labels, results if isinstance(key, tuple) else (results,))]
    except Skip as exc:
        made = [{**skipped(k, text, str(exc)), **extra} for k, text in zip(keys, labels)]
        bench.say(f"    skipped: {exc}")
    except Exception as exc:
        made = [{**failed(k, text, exc), **extra} for k, text in zip(keys, labels)]
        bench.say(f"    FAILED: {exc}")
    finally:
        bench.end_case()
    rows += made
    if report is not None and made[-1]["status"] == "ok":
        bench.say(f"    {report(made[-1])}")
    return made


@dataclass
class Option:
    """A command-line option of a scenario: ``--flag`` and argparse's keywords; ``full`` and
    ``quick``: its value in a full and in a ``--quick`` run (None: argparse's default)."""
    flag: str
    full: object = None
    quick: object = None
    kwargs: dict = field(default_factory=dict)


def option(flag, full=None, quick=None, **kwargs):
    return Option(flag, full, quick, kwargs)


@dataclass
class Column:
    """One column of a scenario's table: its heading and the cell of an ``ok`` row;
    ``always``: shown for a skipped or failed row too (else the reason spans it)."""
    head: str
    cell: Callable
    always: bool = False


@dataclass
class Scenario:
    name: str
    number: str  # "1", "1b", ...: the order, the progress lines' "[number name]" and the title's number
    title: str
    run: Callable  # run(bench, rows)
    columns: list  # [Column], after the first column: the row's label
    first: str = "case"  # the first column's heading
    options: list = field(default_factory=list)  # [Option]
    targets: Callable = None  # targets(rows) -> [target(...)], rows: this scenario's (empty if not run)
    default: bool = True  # run unless --scenarios names others

    def order(self):
        digits = "".join(c for c in self.number if c.isdigit())
        return int(digits), self.number[len(digits):]


def target(name, want, measured=None, ratio=None, met=None):
    """One target of the benchmark: ``measured`` None when it was not measured."""
    if measured is None:
        return {"target": name, "want": want, "measured": "not measured", "ratio": None, "met": None}
    return {"target": name, "want": want, "measured": measured, "ratio": ratio, "met": met}


def ok_row(rows, key):
    """The measured row ``key`` of a scenario's rows, or None."""
    return next((r for r in rows if r["key"] == key and r["status"] == "ok"), None)


def num(value, digits=0):
    if value is None:
        return "-"
    if isinstance(value, (int, float)):
        return f"{value:,.{digits}f}"
    return str(value)


def ms(value):
    if value is None:
        return "-"
    return f"{value:,.3f}" if value < 1 else f"{value:,.1f}" if value < 100 else f"{value:,.0f}"


def of(done, total):
    """``done / total`` of two row fields, e.g. ``of("delivered", "sent")``, as a cell."""
    return lambda r: f"{num(r[done])} / {num(r[total])}"
