"""The problems planning finds, each said once, naming every step it concerns.

One mistake is often shared: an image whose kliko.yml is broken or that is missing is the same
problem for every step that uses it, and a wrong parameter of a ``matrix:`` step is the same in
each of its expansions. Said once per step, a 1,000-way sweep would print the same sentence a
thousand times (and the image's error, one object kept by the resolver, grew a step name for
each). Here a problem is kept once with the steps it concerns; expansions of one matrix step are
named by their matrix step ("step 'sweep' (all 200 expansions)").
"""

from __future__ import annotations

import copy
from collections import Counter
from dataclasses import dataclass, field

from kliko_async.errors import ChainError, KlikoError
from kliko_async.model.chain import Chain, Step
from kliko_async.model.chainmodel import matrix_steps

SHOWN_STEPS = 5
"""A problem shared by more steps (apart from whole matrix steps) names this many of them."""


@dataclass
class _Problem:
    error: KlikoError
    said_at: str | None
    """A parameter problem: the ``where`` it was raised with (its step and image), said again
    for all its steps; None for an image's own problem (its error names the image)."""
    image: str = ""
    steps: list[Step] = field(default_factory=list)


class PlanProblems:
    """Collects what is wrong with the steps of ``chain``; :meth:`raise_any` raises it as one
    error (the problem's own when there is one, else a ChainError listing them all)."""

    def __init__(self, chain: Chain) -> None:
        self._chain = chain
        self._expansions: Counter[str] = Counter()  # matrix step -> its expansions, once needed
        self._problems: dict[tuple[object, ...], _Problem] = {}

    def of_image(self, error: KlikoError, step: Step) -> None:
        """``step``'s image cannot be used (missing, broken kliko.yml, failed build): the same
        problem for every step of that image."""
        key = ("image", type(error), error.message, error.where, error.hint)
        self._add(key, error, None, step)

    def of_step(self, error: KlikoError, step: Step, image: str, where: str) -> None:
        """``step``'s parameters do not fit its image ``image`` (``error`` raised for ``where``):
        shared only by expansions of one matrix step that have the very same problem."""
        group = step.matrix.step if step.matrix is not None else step.name
        said = error.where.removeprefix(where) if error.where else None
        key = ("step", group, type(error), error.message, error.hint, image, said)
        self._add(key, error, where, step, image)

    def _add(
        self,
        key: tuple[object, ...],
        error: KlikoError,
        said_at: str | None,
        step: Step,
        image: str = "",
    ) -> None:
        problem = self._problems.setdefault(key, _Problem(error, said_at, image))
        problem.steps.append(step)

    def raise_any(self) -> None:
        """Raise what was found, if anything."""
        if not self._problems:
            return  # (a plan without problems, the usual case, pays for nothing here)
        self._expansions = Counter(matrix_steps(self._chain.steps.values()).values())
        errors = [self._said(problem) for problem in self._problems.values()]
        if len(errors) == 1:
            raise errors[0]
        if errors:
            details = " ".join(f"({n}) {error}" for n, error in enumerate(errors, 1))
            raise ChainError(
                f"{len(errors)} problems were found before running: {details}",
                where=self._chain.source,
            )

    def _said(self, problem: _Problem) -> KlikoError:
        """The problem's error (of its own class, so of its exit status) naming its steps; a
        copy: the resolver keeps an image's error for the next step of that image."""
        steps = self._steps_text(problem.steps)
        error = copy.copy(problem.error)
        if problem.said_at is not None:
            if len(problem.steps) > 1 and error.where and error.where.startswith(problem.said_at):
                said = f"{steps} (image {problem.image})"
                error.where = said + error.where.removeprefix(problem.said_at)
        else:
            error.where = f"{steps}, {error.where}" if error.where else steps
        error.args = (str(error),)
        return error

    def _steps_text(self, steps: list[Step]) -> str:
        """``step 'a'``, or ``steps 'a', 'sweep' (all 20 expansions) and 3 more``."""
        groups: dict[str, list[str]] = {}  # in the order first met: a step, or a matrix step
        for step in steps:
            group = step.matrix.step if step.matrix is not None else step.name
            groups.setdefault(group, []).append(step.name)
        names: list[str] = []
        for group, members in groups.items():
            total = self._expansions[group]
            if not total:  # a step of its own
                names.append(f"'{group}'")
            elif len(members) == total:
                names.append(f"'{group}' (all {total} expansions)")
            elif len(members) <= 2:
                names += [f"'{name}'" for name in members]
            else:
                names.append(
                    f"{len(members)} of the {total} expansions of '{group}' (such as "
                    f"'{members[0]}')"
                )
        if len(names) == 1:
            return f"step {names[0]}"
        shown = names[:SHOWN_STEPS]
        if len(names) > SHOWN_STEPS:
            return f"steps {', '.join(shown)} and {len(names) - SHOWN_STEPS} more"
        return f"steps {', '.join(shown[:-1])} and {shown[-1]}"
