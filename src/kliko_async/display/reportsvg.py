"""The report's pictures, drawn as inline SVG by this code (no plotting library, no network):
the chain as a graph coloured by state, and a timeline of every step.

Expansions of one ``matrix:`` step are folded into one node (and, past :data:`ROWS_UNFOLDED`
steps, one timeline row), so a 1,000-way matrix stays readable.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from html import escape

from kliko_async.display.runrecord import StepRecord

STATE_COLOURS = {
    "ran": "#3a9d5d",
    "cached": "#3c8dbc",
    "failed": "#d9534f",
    "skipped": "#b0b0b0",
    "cancelled": "#8a6d3b",
    "not run": "#dddddd",
}
WAIT_COLOUR, PREPARE_COLOUR, BUILD_COLOUR = "#e4e4e4", "#9fd3ef", "#b39ddb"
PUBLISH_COLOUR = "#1f5f3a"
ROWS_UNFOLDED = 200
"""Up to this many steps the timeline has a row per step; past it, a row per matrix step."""


@dataclass
class Group:
    """One node of the graph: a step, or every expansion of one matrix step."""

    name: str
    steps: list[StepRecord] = field(default_factory=list)
    inputs: set[str] = field(default_factory=set)

    @property
    def state(self) -> str:
        states = {s.state for s in self.steps}
        for state in ("failed", "cancelled", "ran", "cached", "skipped"):
            if state in states:
                return state
        return "not run"

    def counts(self) -> str:
        tally: dict[str, int] = {}
        for step in self.steps:
            tally[step.state] = tally.get(step.state, 0) + 1
        return " · ".join(f"{n} {state}" for state, n in tally.items())


def group_steps(steps: Sequence[StepRecord]) -> list[Group]:
    """Steps folded by matrix step (``StepRecord.group``), in the run's order."""
    groups: dict[str, Group] = {}
    group_of = {s.name: s.group or s.name for s in steps}
    for step in steps:
        group = groups.setdefault(group_of[step.name], Group(group_of[step.name]))
        group.steps.append(step)
        group.inputs.update(group_of.get(i, i) for i in step.inputs)
    return list(groups.values())


def _depths(groups: Sequence[Group]) -> dict[str, int]:
    depth: dict[str, int] = {}
    known = {g.name for g in groups}
    for group in groups:  # inputs come first in the run's order
        depth[group.name] = 1 + max(
            (depth.get(i, 0) for i in group.inputs if i in known and i != group.name), default=-1
        )
    return depth


def graph_svg(steps: Sequence[StepRecord]) -> str:
    """The chain, left to right by depth, one box per step or matrix step, coloured by state."""
    groups = group_steps(steps)
    depth = _depths(groups)
    columns: dict[int, list[Group]] = {}
    for group in groups:
        columns.setdefault(depth[group.name], []).append(group)
    width, height, gap_x, gap_y = 190, 46, 70, 18
    where: dict[str, tuple[int, int]] = {}
    for column, members in columns.items():
        for row, group in enumerate(members):
            where[group.name] = (20 + column * (width + gap_x), 20 + row * (height + gap_y))
    total_w = 40 + len(columns) * (width + gap_x) - gap_x
    total_h = 40 + max((len(m) for m in columns.values()), default=1) * (height + gap_y) - gap_y
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" class="graph" width="{total_w}" '
        f'height="{total_h}" viewBox="0 0 {total_w} {total_h}" role="img" '
        'aria-label="the chain as a graph">'
    ]
    for group in groups:
        x2, y2 = where[group.name]
        for source in sorted(group.inputs):
            if source not in where or source == group.name:
                continue
            x1, y1 = where[source]
            sx, sy, ex, ey = x1 + width, y1 + height // 2, x2, y2 + height // 2
            mid = (sx + ex) // 2
            parts.append(
                f'<path class="edge" d="M{sx},{sy} C{mid},{sy} {mid},{ey} {ex},{ey}" '
                'fill="none" stroke="#888" stroke-width="1.5"/>'
            )
    for group in groups:
        x, y = where[group.name]
        label = group.name if len(group.steps) == 1 else f"{group.name} ×{len(group.steps)}"
        detail = group.steps[0].state if len(group.steps) == 1 else group.counts()
        parts.append(
            f'<g class="node" data-step="{escape(group.name)}" data-state="{group.state}">'
            f"<title>{escape(label)}: {escape(detail)}</title>"
            f'<rect x="{x}" y="{y}" width="{width}" height="{height}" rx="6" '
            f'fill="{STATE_COLOURS[group.state]}"/>'
            f'<text x="{x + 8}" y="{y + 19}" fill="#fff" font-weight="bold">'
            f"{escape(_cut(label, 24))}</text>"
            f'<text x="{x + 8}" y="{y + 36}" fill="#fff" font-size="11">'
            f"{escape(_cut(detail, 30))}</text></g>"
        )
    parts.append("</svg>")
    return "".join(parts)


def _cut(text: str, most: int) -> str:
    return text if len(text) <= most else text[: most - 1] + "…"


@dataclass
class _Row:
    label: str
    steps: list[StepRecord]


def timeline_svg(steps: Sequence[StepRecord], wall_s: float | None) -> str:
    """A Gantt chart: per step (or matrix step) its waiting, preparing and running time, with
    cache hits marked; seconds from the run's start along the top."""
    if len(steps) <= ROWS_UNFOLDED:
        rows = [_Row(s.name, [s]) for s in steps]
    else:
        rows = [
            _Row(g.name if len(g.steps) == 1 else f"{g.name} ×{len(g.steps)}", g.steps)
            for g in group_steps(steps)
        ]
    ends = [t for s in steps for t in (s.ended_at, s.started_at, s.queued_at) if t is not None]
    span = max([wall_s or 0.0, *ends, 0.001])
    label_w, plot_w, row_h = 230, 760, 20
    scale = plot_w / span
    height = 30 + len(rows) * row_h + 10
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" class="timeline" width="{label_w + plot_w + 20}"'
        f' height="{height}" role="img" aria-label="the timeline of every step">'
    ]
    for tick in _ticks(span):
        x = label_w + tick * scale
        parts.append(
            f'<line x1="{x:.1f}" y1="22" x2="{x:.1f}" y2="{height - 10}" stroke="#eee"/>'
            f'<text x="{x:.1f}" y="14" font-size="11" text-anchor="middle">{tick:g}s</text>'
        )
    for index, row in enumerate(rows):
        y = 26 + index * row_h
        parts.append(
            f'<g class="row" data-step="{escape(row.label)}">'
            f'<text x="4" y="{y + 13}" font-size="12">{escape(_cut(row.label, 32))}</text>'
        )
        for step in row.steps:
            parts.extend(_bars(step, label_w, scale, y, row_h - 6))
        parts.append("</g>")
    parts.append("</svg>")
    return "".join(parts)


def _bars(step: StepRecord, left: int, scale: float, y: int, h: int) -> list[str]:
    def bar(start: float | None, end: float | None, colour: str, what: str) -> str:
        if start is None or end is None or end < start:
            return ""
        x, w = left + start * scale, max((end - start) * scale, 1.5)
        return (
            f'<rect class="bar {what}" x="{x:.1f}" y="{y}" width="{w:.1f}" height="{h}" '
            f'fill="{colour}"><title>{escape(step.name)}: {what} '
            f"{end - start:.2f}s</title></rect>"
        )

    if step.state == "cached":
        x = left + (step.ended_at or 0.0) * scale
        return [
            f'<path class="bar cached" d="M{x:.1f},{y} l{h / 2},{h / 2} l-{h / 2},{h / 2} '
            f'l-{h / 2},-{h / 2} z" fill="{STATE_COLOURS["cached"]}"><title>{escape(step.name)}: '
            f"cached (saved {step.saved_s:.1f}s)</title></path>"
        ]
    running_from = step.started_at
    prepared_from = step.preparing_at
    waiting_until = prepared_from if prepared_from is not None else running_from
    ran_until = step.publishing_at if step.publishing_at is not None else step.ended_at
    return [
        bar(step.building_at, step.queued_at, BUILD_COLOUR, "building"),
        bar(step.queued_at, waiting_until, WAIT_COLOUR, "waiting"),
        bar(prepared_from, running_from, PREPARE_COLOUR, "preparing"),
        bar(running_from, ran_until, STATE_COLOURS[step.state], step.state),
        bar(step.publishing_at, step.ended_at, PUBLISH_COLOUR, "publishing"),
    ]


def _ticks(span: float) -> list[float]:
    for step in (0.1, 0.2, 0.5, 1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 1800, 3600, 7200):
        if span / step <= 12:
            return [round(i * step, 3) for i in range(int(span / step) + 1)]
    return [0.0, span]
