"""Dashboards as data: what each dashboard shows and the DeepFlow SQL behind every panel.

``library.py`` writes the dashboards with these classes; ``render.py`` turns them into Grafana JSON
with the foundation SDK. Nothing here knows Grafana's JSON, so a dashboard reads as a list of
panels and their queries.

SQL conventions (the dialect of reference/deepflow-querier.md):

* time: ``TIME`` compares ``time`` with Infinity's backend macros — plain epoch seconds, the same
  text in dashboards and alert rules;
* variables: ``pick(var, tag…)`` is DeepFlow's "Any" guard. Every selectable variable has the
  custom All value ``'__any'`` (quotes included), and queries only use ``${var:singlequote}``, so
  All gives ``'__any' IN ('__any') OR …`` (no filter) and a selection ``'__any' IN ('a','b') OR
  tag IN ('a','b')``. Values are names (``display_name``), so filters read like DeepFlow's own;
* every selected column has a plain alias: it is the record key Infinity selects.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from dashboards.infinity import EPOCH_S, NUMBER, STRING, Column

FLOW_LOG, FLOW_METRICS = "flow_log", "flow_metrics"
ANY = "'__any'"
TIME = "time >= ${__timeFrom:date:seconds} AND time <= ${__timeTo:date:seconds}"
BUCKET = "time(time, 60) AS time_60"   # one point per minute: the 1m tables' resolution


def ref(var: str) -> str:
    return "${" + var + ":singlequote}"


def pick(var: str, *tags: str) -> str:
    """``tags`` (any of them) among the variable's values, or everything when All is selected."""
    values = ref(var)
    return "(" + " OR ".join([f"{ANY} IN ({values})", *(f"{t} IN ({values})" for t in tags)]) + ")"


def either_end(var: str, tag: str) -> str:
    return pick(var, f"{tag}_0", f"{tag}_1")


def text_filter(var: str, condition: str) -> str:
    """A text box: empty means no filter; ``condition`` uses ``{v}`` for the quoted value."""
    return f"({ref(var)} = '' OR {condition.format(v=ref(var))})"


def where(*conditions: str) -> str:
    return " AND ".join(c for c in conditions if c)


# Column helpers: the frame fields a panel expects.
def s(*names: str) -> tuple[Column, ...]:
    return tuple(Column(n, STRING) for n in names)


def n(*names: str) -> tuple[Column, ...]:
    return tuple(Column(n, NUMBER) for n in names)


TIME_COLUMN = (Column("time_60", EPOCH_S),)


@dataclass(frozen=True)
class Target:
    """One DeepFlow statement and the fields it must return."""

    db: str
    sql: str
    columns: tuple[Column, ...]
    precision: str | None = "1m"
    ref_id: str = "A"
    format: str = "table"          # Infinity's frame format: table | timeseries


@dataclass(frozen=True)
class Link:
    """A data link on a table column (``${__value.raw}`` is the cell)."""

    column: str
    title: str
    url: str


@dataclass(frozen=True)
class Panel:
    kind: str                      # timeseries | table | stat | nodegraph | histogram | bargauge | traces |
                                   # deepflow-trace
    title: str
    targets: tuple[Target, ...] = ()
    width: int = 12
    height: int = 8
    unit: str = ""
    description: str = ""
    links: tuple[Link, ...] = ()
    units: tuple[tuple[str, str], ...] = ()     # per-column units (table)
    trace_id: str = ""             # traces panels: the Jaeger query; deepflow-trace: the JSON trace id
    fields: tuple[Column, ...] = ()   # deepflow-trace: the span fields shown

    @property
    def expects(self) -> str:
        """The frame shape the panel needs: timeseries (a time field and numbers), nodegraph
        (edges: id, source, target), or table."""
        return {"timeseries": "timeseries", "nodegraph": "nodegraph"}.get(self.kind, "table")


@dataclass(frozen=True)
class Row:
    title: str
    panels: tuple[Panel, ...]


@dataclass(frozen=True)
class Variable:
    """A dashboard variable: a dialect query (``SHOW tag X values FROM T``) or a text box."""

    name: str
    label: str
    db: str = ""
    sql: str = ""                  # empty: a text box
    value: str = "display_name"    # the column whose values the SQL filters compare with
    multi: bool = True

    @property
    def textbox(self) -> bool:
        return not self.sql


@dataclass(frozen=True)
class Dashboard:
    uid: str
    title: str
    description: str
    tags: tuple[str, ...]
    variables: tuple[Variable, ...]
    rows: tuple[Row, ...]
    folder: str = "flowscope"
    links: tuple[str, ...] = field(default=())    # uids of related dashboards (top links)

    def panels(self) -> list[Panel]:
        return [p for r in self.rows for p in r.panels]


def timeseries(title: str, db: str, sql: str, numbers: tuple[str, ...], *, labels: tuple[str, ...] = (),
               unit: str = "", precision: str | None = "1m", width: int = 12, description: str = "") -> Panel:
    """A time series panel over one ``GROUP BY time_60[, labels]`` statement (labels → one series each)."""
    cols = TIME_COLUMN + s(*labels) + n(*numbers)
    return Panel("timeseries", title, (Target(db, sql, cols, precision, format="timeseries"),), width=width,
                 unit=unit, description=description)


def table(title: str, db: str, sql: str, columns: tuple[Column, ...], *, precision: str | None = "1m",
          width: int = 24, height: int = 9, links: tuple[Link, ...] = (), units: tuple[tuple[str, str], ...] = (),
          description: str = "", kind: str = "table") -> Panel:
    return Panel(kind, title, (Target(db, sql, columns, precision),), width=width, height=height, links=links,
                 units=units, description=description)


def stat(title: str, db: str, sql: str, numbers: tuple[str, ...], *, unit: str = "", precision: str | None = "1m",
         width: int = 24, units: tuple[tuple[str, str], ...] = ()) -> Panel:
    """One stat panel showing every number of one statement (one request for all the totals)."""
    return Panel("stat", title, (Target(db, sql, n(*numbers), precision),), width=width, height=5, unit=unit,
                 units=units)


def node_graph(title: str, db: str, sql: str, details: tuple[str, ...], *, main_unit: str, secondary_unit: str,
               precision: str | None = "1m", description: str = "") -> Panel:
    """Grafana Node Graph from one edges frame (refId ``edges``; Grafana derives the nodes from the
    edges' source and target). ``sql`` selects id, source, target, mainstat, secondarystat, detail__*."""
    cols = s("id", "source", "target") + n("mainstat", "secondarystat") + n(*details)
    return Panel("nodegraph", title, (Target(db, sql, cols, precision, ref_id="edges"),), width=24, height=14,
                 units=(("mainstat", main_unit), ("secondarystat", secondary_unit)), description=description)
