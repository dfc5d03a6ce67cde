"""The graph checks of a chain: every input names another step, and the inputs form no cycle.

Graphs are plain mappings of a step name to the names of its inputs, in file order, so the
checks serve the chain model and anything else shaped like a DAG. Linear in the graph's size.
"""

from __future__ import annotations

import heapq
from collections import Counter
from collections.abc import Mapping, Sequence

from kliko_async.errors import ChainError
from kliko_async.model.yamltext import did_you_mean, join_problems

__all__ = ["CYCLE_HINT", "check_dag", "cycle_text", "topological_order"]

Graph = Mapping[str, Sequence[str]]
"""Step name -> names of its inputs, in file order."""

CYCLE_HINT = "Remove one of these inputs so the steps form a DAG."
_INPUT_HINT = "Each input must be the name of another step in the same chain."
_MAX_SUGGESTED = 20


def _kahn(graph: Graph) -> tuple[list[str], list[int]]:
    """Topological order (ready steps taken in file order) and each step's unmet input count."""
    names = list(graph)
    index = {name: position for position, name in enumerate(names)}
    unmet = [len(inputs) for inputs in graph.values()]
    children: list[list[int]] = [[] for _ in names]
    for position, inputs in enumerate(graph.values()):
        for source in inputs:
            children[index[source]].append(position)
    ready = [position for position, count in enumerate(unmet) if count == 0]  # sorted: a heap
    order: list[str] = []
    while ready:
        position = heapq.heappop(ready)
        order.append(names[position])
        for child in children[position]:
            unmet[child] -= 1
            if unmet[child] == 0:
                heapq.heappush(ready, child)
    return order, unmet


def topological_order(graph: Graph) -> list[str] | None:
    """Step names with every step after its inputs, or None when the inputs form a cycle.

    Kahn's algorithm, always taking the ready step that comes first in the file, so a file that
    already lists every step after its inputs keeps its order.
    """
    order, _ = _kahn(graph)
    return order if len(order) == len(graph) else None


def cycle_text(graph: Graph) -> str:
    """Describe one cycle as ``cycle: a -> b -> a`` (each step feeds the next)."""
    _, unmet = _kahn(graph)
    names = list(graph)
    index = {name: position for position, name in enumerate(names)}
    # Every step left over has an input that is also left over: walk inputs until one repeats.
    current = next(position for position, count in enumerate(unmet) if count > 0)
    seen_at: dict[int, int] = {}
    path: list[int] = []
    while current not in seen_at:
        seen_at[current] = len(path)
        path.append(current)
        current = next(
            index[source] for source in graph[names[current]] if unmet[index[source]] > 0
        )
    loop = path[seen_at[current] :][::-1]  # reversed: data flows from an input to its reader
    start = loop.index(min(loop))
    loop = loop[start:] + loop[:start]
    text = " -> ".join(names[position] for position in [*loop, loop[0]])
    return f"the steps' inputs form a cycle: {text}"


def check_dag(
    source: str,
    graph: Graph,
    problems: list[str] | None = None,
    families: Mapping[str, str] | None = None,
) -> None:
    """Raise one ChainError for unknown, repeated or self inputs (added to ``problems``), or for a
    cycle; ``source`` names the chain in the message. ``families``: expanded step -> the matrix
    step it came from; a mistake every expansion shares is said once, of the matrix step."""
    problems = list(problems or [])
    families = families or {}
    found: dict[tuple[str, str, str], list[str]] = {}  # (step or family, kind, input) -> steps
    for name, inputs in graph.items():
        listed: set[str] = set()
        for input_name in inputs:
            if input_name == name:
                kind = "self"
            elif input_name in listed:
                kind = "repeated"
            elif input_name not in graph:
                kind = "unknown"
            else:
                kind = ""
            if kind:
                found.setdefault((families.get(name, name), kind, input_name), []).append(name)
            listed.add(input_name)
    if found:  # (a chain without mistakes, the usual case, pays for none of this)
        _say_found(found, graph, families, problems)
    if problems:
        raise ChainError(join_problems(problems), where=source, hint=_INPUT_HINT)
    if topological_order(graph) is None:
        raise ChainError(cycle_text(graph), where=source, hint=CYCLE_HINT)


def _say_found(
    found: Mapping[tuple[str, str, str], list[str]],
    graph: Graph,
    families: Mapping[str, str],
    problems: list[str],
) -> None:
    """Add the input mistakes ``found`` to ``problems``, one per matrix step that shares one."""
    sizes = Counter(families.values())
    # Suggested instead of a mistyped input: steps and matrix steps (not each expansion).
    candidates = [*(name for name in graph if name not in families), *sizes]
    for (who, kind, input_name), names in found.items():
        step = repr(names[0]) if len(names) == 1 else _expansions(who, len(names), sizes[who])
        if kind == "self":
            problems.append(f"step {step} lists itself as an input")
        elif kind == "repeated":
            problems.append(f"step {step} lists input {input_name!r} more than once")
        else:
            hint = did_you_mean(input_name, candidates) if len(problems) < _MAX_SUGGESTED else ""
            problems.append(
                f"step {step} has input {input_name!r}, but there is no such step{hint}"
            )


def _expansions(family: str, count: int, total: int) -> str:
    """The matrix step ``family`` as the subject of a problem ``count`` of its expansions share."""
    if count == total:
        return f"{family!r} (all {total} expansions)"
    return f"{family!r} ({count} of its {total} expansions)"
