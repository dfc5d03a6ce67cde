"""``kliko-async graph``: a chain's DAG, drawn in the terminal or written as Graphviz.

Steps are laid out in layers (a step sits one layer below its deepest input), each with its
cache state, image, inputs and consumers. ``--format dot`` writes Graphviz's language;
``--format svg`` runs Graphviz's ``dot``, an optional tool (Debian: ``apt-get install graphviz``).
"""

from __future__ import annotations

import shutil
import subprocess

from rich.console import Console
from rich.text import Text

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
    """The DAG as text: one block per layer, one line per step with its edges."""
    to_run = len(plan.to_run)
    grouped = layers(plan)
    console.print(
        Text.assemble(
            (plan.source, "bold"),
            f": {len(plan.order)} steps in {len(grouped)} "
            f"layer{'s' if len(grouped) != 1 else ''}; "
            f"{len(plan.order) - to_run} cached, {to_run} to run",
        )
    )
    width = max((len(n) for n in plan.order), default=4)
    image_width = max((len(s.image.ref) for s in plan.steps.values()), default=4)
    outputs = consumers(plan)
    for number, names in enumerate(grouped, start=1):
        console.print(Text(f"layer {number}", style="dim"))
        for name in names:
            step = plan.steps[name]
            state = state_of(plan, name)
            line = Text("  ")
            line.append(f"{name:<{width}}", style="bold")
            line.append(f"  {state:<6}", style=_STATE_STYLES[state])
            line.append(f"  {step.image.ref:<{image_width}}", style="dim")
            if step.step.inputs:
                line.append("  ← " + ", ".join(step.step.inputs))
            if outputs[name]:
                line.append("  → " + ", ".join(outputs[name]))
            console.print(line)


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
