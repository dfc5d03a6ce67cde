"""``kliko-async graph``: a chain's DAG, drawn in the terminal or written as Graphviz.

Steps are laid out in layers (a step sits one layer below its deepest input), each with its
cache state, image, inputs and consumers. ``--format dot`` writes Graphviz's language;
``--format svg`` runs Graphviz's ``dot``, an optional tool (Debian: ``apt-get install graphviz``).
"""

from __future__ import annotations

import shutil
import subprocess
from typing import NamedTuple

from rich.console import Console
from rich.text import Text

from kliko_async.display.dryrun import shown_inputs
from kliko_async.display.wording import counted
from kliko_async.engine.plan import Plan
from kliko_async.errors import KlikoError

_STATE_STYLES = {"cached": "cyan", "forced": "magenta", "to run": "yellow"}
_DOT_COLOURS = {"cached": "#cdeffa", "forced": "#f3d7f5", "to run": "#fff2c2"}


def layers(plan: Plan) -> list[list[str]]:
    """Steps by depth: sources first, each step one layer below its deepest input."""
    depth: dict[str, int] = {}
    for name in plan.order:  # inputs come before their consumers in ``order``
        inputs = plan.steps[name].step.inputs
        depth[name] = 1 + max((depth.get(i, -1) for i in inputs), default=-1)  # data: -1
    grouped: list[list[str]] = [[] for _ in range(max(depth.values(), default=-1) + 1)]
    for name in plan.order:
        grouped[depth[name]].append(name)
    return grouped


def state_of(plan: Plan, name: str) -> str:
    step = plan.steps[name]
    if step.cached is not None:
        return "cached"
    return "forced" if step.forced else "to run"


def consumers(plan: Plan) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {name: [] for name in plan.order}
    for name in plan.order:
        for source in plan.steps[name].step.inputs:
            found.setdefault(source, []).append(name)
    return found


def print_graph(plan: Plan, console: Console) -> None:
    """The DAG as text: one block per layer, one line per step with its edges; the expansions of
    a matrix step in a layer are one line when there are more than three (a 10,000-way sweep
    was 10,000 lines, and its consumer's line named every one of them: 300 kB)."""
    to_run = len(plan.to_run)
    grouped = layers(plan)
    console.print(
        Text.assemble(
            (plan.source, "bold"),
            f": {counted(len(plan.order), 'step')} in {counted(len(grouped), 'layer')}; "
            f"{len(plan.order) - to_run} cached, {to_run} to run",
        )
    )
    outputs = consumers(plan)
    rows = [
        [_row(plan, members, outputs) for members in _families(plan, names)] for names in grouped
    ]
    width = max((len(row.name) for layer in rows for row in layer), default=4)
    state_width = max((len(row.state) for layer in rows for row in layer), default=6)
    image_width = max((len(s.image.ref) for s in plan.steps.values()), default=4)
    for number, layer in enumerate(rows, start=1):
        console.print(Text(f"layer {number}", style="dim"))
        for row in layer:
            line = Text("  ")
            line.append(f"{row.name:<{width}}", style="bold")
            line.append(f"  {row.state:<{state_width}}", style=_STATE_STYLES.get(row.state, ""))
            line.append(f"  {row.image:<{image_width}}", style="dim")
            if row.inputs:
                line.append("  ← " + shown_inputs(row.inputs))
            if row.outputs:
                line.append("  → " + shown_inputs(row.outputs))
            console.print(line)


class _Row(NamedTuple):
    name: str
    state: str
    image: str
    inputs: list[str]
    outputs: list[str]


def _families(plan: Plan, names: list[str]) -> list[list[str]]:
    """``names`` (one layer) grouped: the expansions of one matrix step together when there
    are more than three of them, every other step alone; in the order of their first step."""
    families: dict[str, list[str]] = {}
    for name in names:
        matrix = plan.steps[name].step.matrix
        families.setdefault(matrix.step if matrix is not None else name, []).append(name)
    return [
        part
        for members in families.values()
        for part in ([members] if len(members) > 3 else [[m] for m in members])
    ]


def _row(plan: Plan, members: list[str], outputs: dict[str, list[str]]) -> _Row:
    first = plan.steps[members[0]]
    if len(members) == 1:
        inputs = list(first.step.inputs)
        return _Row(
            members[0], state_of(plan, members[0]), first.image.ref, inputs, outputs[members[0]]
        )
    states: dict[str, int] = {}
    for name in members:
        states[state_of(plan, name)] = states.get(state_of(plan, name), 0) + 1
    state = (
        next(iter(states))
        if len(states) == 1
        else ", ".join(f"{count:,} {what}" for what, count in states.items())
    )
    family = first.step.matrix.step if first.step.matrix is not None else members[0]
    return _Row(
        f"{family}[...] ({len(members):,} expansions)",
        state,
        first.image.ref,
        list(dict.fromkeys(i for name in members for i in plan.steps[name].step.inputs)),
        list(dict.fromkeys(o for name in members for o in outputs[name])),
    )


def to_dot(plan: Plan) -> str:
    """The DAG in Graphviz's language: boxes coloured by cache state, edges input -> consumer."""
    lines = [
        "digraph chain {",
        "  rankdir=LR;",
        '  node [shape=box, style="rounded,filled", fontname="Helvetica"];',
    ]
    for name in plan.order:
        step = plan.steps[name]
        state = state_of(plan, name)
        label = f"{name}\\n{step.image.ref}\\n{state} {step.key[:12]}"
        lines.append(
            f"  {_quote(name)} [label={_quote(label, raw=True)}, "
            f'fillcolor="{_DOT_COLOURS[state]}"];'
        )
    for name in plan.order:
        for source in plan.steps[name].step.inputs:
            lines.append(f"  {_quote(source)} -> {_quote(name)};")
    lines.append("}")
    return "\n".join(lines) + "\n"


def _quote(text: str, *, raw: bool = False) -> str:
    """A Graphviz double-quoted string; ``raw`` keeps ``\\n`` escapes already in ``text``."""
    escaped = text.replace('"', '\\"') if raw else text.replace("\\", "\\\\").replace('"', '\\"')
    return f'"{escaped}"'


def to_svg(plan: Plan) -> bytes:
    """The DAG drawn by Graphviz's ``dot`` as SVG."""
    dot = shutil.which("dot")
    if dot is None:
        raise KlikoError(
            "--format svg needs Graphviz's 'dot' program, which is not installed",
            hint="Install Graphviz (Debian: apt-get install graphviz), or write --format dot "
            "and draw it elsewhere.",
        )
    done = subprocess.run(
        [dot, "-Tsvg"], input=to_dot(plan).encode(), capture_output=True, check=False
    )
    if done.returncode != 0:
        raise KlikoError(f"Graphviz's dot failed: {done.stderr.decode(errors='replace').strip()}")
    return done.stdout
