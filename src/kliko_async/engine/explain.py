"""Why a step would run, or where its cached result comes from, in words.

Keys are content-addressed and every entry's manifest records the ingredients it was keyed by
(:class:`~kliko_async.cache.key.KeyIngredients`), so a step that would run can be compared with the
entry it would have matched: the cache's entries made by a step of the same name, the one whose
ingredients differ least (the newest among equals). Each differing ingredient is one
:class:`IngredientChange`; a changed input is chased upstream to the change that caused it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from datetime import UTC, datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from kliko_async.cache.entry import Manifest
from kliko_async.cache.key import LONE_INPUT, KeyIngredients
from kliko_async.cache.store import Cache
from kliko_async.engine.logsearch import newest_failed_logs
from kliko_async.engine.plan import Plan, PlannedStep
from kliko_async.model.parameters import PARAM_FILES_DIR

__all__ = [
    "EntryInfo",
    "IngredientChange",
    "ManifestIndex",
    "RootCause",
    "StepExplanation",
    "explain_plan",
]

Ingredient = Literal[
    "image", "command", "io", "parameter", "file parameter", "env", "input", "input layout"
]


class EntryInfo(BaseModel):
    """One cache entry, as an explanation names it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    key: str = Field(description="The entry's cache key.")
    step: str = Field(description="The step that made it.")
    image: str = Field(description="The image as that step named it.")
    run_id: str | None = Field(description="The run that made it (None for older entries).")
    made_at: datetime = Field(description="When the step finished.")
    duration_s: float = Field(description="How long the step ran, in seconds.")

    @classmethod
    def of(cls, manifest: Manifest) -> EntryInfo:
        return cls(
            key=manifest.key,
            step=manifest.step,
            image=manifest.image,
            run_id=manifest.run_id,
            made_at=manifest.finished_at,
            duration_s=manifest.duration_s,
        )

    def text(self) -> str:
        made = self.made_at.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
        run = f" by run {self.run_id}" if self.run_id else ""
        return f"entry {self.key[:12]} made {made}{run}, ran {self.duration_s:.1f}s"


class RootCause(BaseModel):
    """A change found upstream that makes a step's input re-run: in which step, and what."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    step: str = Field(description="The upstream step where the change is.")
    text: str = Field(description="The change, such as 'parameter n: 5 -> 7' or 'never ran'.")


class IngredientChange(BaseModel):
    """One key ingredient that differs between a step's plan and the entry it would have matched."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    ingredient: Ingredient = Field(description="Which kind of ingredient differs.")
    name: str | None = Field(
        default=None, description="The parameter, file parameter, variable or input, if any."
    )
    before: Any = Field(default=None, description="What the entry was made with (None: absent).")
    after: Any = Field(default=None, description="What the step has now (None: absent).")
    root_causes: list[RootCause] = Field(
        default_factory=list,
        description=(
            "For a changed input that re-runs: the changes upstream that cause it (each once, "
            "found by following changed inputs up to steps that changed themselves)."
        ),
    )
    text: str = Field(description="The change in words, such as 'parameter n: 5 -> 7'.")


class StepExplanation(BaseModel):
    """Why one step of a plan would run, or which entry it is cached as."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: Literal["explanation"] = Field(
        default="explanation", description="Tells explanations from events in a JSON stream."
    )
    step: str = Field(description="The step's name.")
    key: str = Field(description="The step's cache key in this plan.")
    state: Literal["cached", "would run"] = Field(description="What the plan does with it.")
    forced: bool = Field(description="Whether --force or --no-cache makes it run.")
    entry: EntryInfo | None = Field(
        description=(
            "Cached: the entry it uses. Would run: the entry it would have matched (the closest "
            "one made by a step of the same name), or None when it never ran."
        )
    )
    changes: list[IngredientChange] = Field(
        description="Would run: every ingredient that differs from that entry's, in key order."
    )
    unbuilt: str | None = Field(
        default=None,
        description="Why the step has no key yet: a dry run builds no image (key is then '').",
    )
    failed_log: str | None = Field(
        default=None,
        description="Would run and no entry of its name is cached: the log of the latest failed "
        "attempt of a step of its name, when one is kept.",
    )

    @property
    def reason(self) -> str:
        """The cause in one phrase: 'never ran', or the changes joined by '; '."""
        if self.state == "cached":
            return "cached"
        if self.unbuilt is not None:
            return self.unbuilt
        if self.forced and not self.changes:
            return "forced (--force or --no-cache)"
        if self.entry is None and self.failed_log is not None:
            return f"never finished well (an attempt failed; its log: {self.failed_log})"
        if self.entry is None:
            return "never ran"
        if not self.changes:
            return "its entry is no longer in the cache"
        return "; ".join(change.text for change in self.changes)

    def root_causes(self) -> list[RootCause]:
        """This step's own changes (or 'never ran'), then those its changed inputs inherit."""
        if self.state == "cached":
            return []
        found: list[RootCause] = []
        if self.entry is None:
            text = "never ran" if self.failed_log is None else "never finished well"
            found.append(RootCause(step=self.step, text=text))
        for change in self.changes:
            if change.root_causes:
                found.extend(change.root_causes)
            elif change.ingredient != "input" or not change.before or not change.after:
                found.append(RootCause(step=self.step, text=change.text))
        return list({(cause.step, cause.text): cause for cause in found}.values())

    def lines(self) -> list[str]:
        """The explanation as the ``why`` command prints it."""
        if self.state == "cached":
            assert self.entry is not None
            return [f"{self.step}: cached: {self.entry.text()}"]
        state = "would run (forced)" if self.forced else "would run"
        lines = [f"{self.step}: {state}: {self.reason}"]
        if self.entry is not None:
            lines.append(f"  it would have matched {self.entry.text()}")
        return lines


class ManifestIndex:
    """The manifests of a cache's entries by the name of the step that made them: one pass over
    the cache, then each step's candidates without reading the disk again."""

    def __init__(
        self, manifests: Iterable[Manifest], failed_logs: Mapping[str, str] | None = None
    ) -> None:
        self._by_step: dict[str, list[Manifest]] = {}
        for manifest in manifests:
            self._by_step.setdefault(manifest.step, []).append(manifest)
        self.failed_logs = dict(failed_logs or {})
        """Step name -> the log of the latest failed attempt of a step of that name."""

    @classmethod
    def of_cache(cls, cache: Cache) -> ManifestIndex:
        failed = {step: str(path) for step, path in newest_failed_logs(cache).items()}
        return cls((entry.manifest for entry in cache.entries()), failed)

    def closest(
        self, step: str, ingredients: KeyIngredients, image: str
    ) -> tuple[Manifest, list[IngredientChange]] | None:
        """The entry made by ``step`` whose ingredients differ least (newest among equals), with
        those differences (inputs not yet chased upstream), or None when ``step`` never ran."""
        best: tuple[int, float, Manifest, list[IngredientChange]] | None = None
        for manifest in self._by_step.get(step, []):
            changes = _differences(manifest, ingredients, image)
            rank = (len(changes), -manifest.finished_at.timestamp())
            if best is None or rank < best[:2]:
                best = (*rank, manifest, changes)
        return None if best is None else (best[2], best[3])


def explain_plan(
    plan: Plan, index: ManifestIndex, steps: Iterable[str] | None = None
) -> list[StepExplanation]:
    """Explain ``steps`` of ``plan`` (all, in plan order, when None) against ``index``."""
    done: dict[str, StepExplanation] = {}

    def explain(name: str) -> StepExplanation:
        if name in done:
            return done[name]
        if name in plan.unbuilt:
            done[name] = StepExplanation(
                step=name,
                key="",
                state="would run",
                forced=False,
                entry=None,
                changes=[],
                unbuilt=plan.unbuilt[name],
            )
            return done[name]
        planned = plan.steps[name]
        if planned.cached is not None:
            explanation = StepExplanation(
                step=name,
                key=planned.key,
                state="cached",
                forced=False,
                entry=EntryInfo.of(planned.cached.manifest),
                changes=[],
            )
        else:
            explanation = _would_run(planned, index, plan.steps, explain)
        done[name] = explanation
        return explanation

    for name in plan.order:  # inputs first, so chasing upstream never recurses deeply
        explain(name)
    wanted = plan.order if steps is None else list(steps)
    return [done[name] for name in wanted]


def _would_run(
    planned: PlannedStep,
    index: ManifestIndex,
    plan_steps: Mapping[str, PlannedStep],
    explain: Any,
) -> StepExplanation:
    found = index.closest(planned.name, planned.ingredients, planned.image.ref)
    if found is None:
        return StepExplanation(
            step=planned.name,
            key=planned.key,
            state="would run",
            forced=planned.forced,
            entry=None,
            changes=[],
            failed_log=index.failed_logs.get(planned.name),
        )
    manifest, changes = found
    chased: list[IngredientChange] = []
    for change in changes:
        source = change.name or ""
        if source == LONE_INPUT and len(planned.step.inputs) == 1:
            source = planned.step.inputs[0]  # a lone input is keyed by where it is, not its step
        if change.ingredient == "input" and change.before and change.after and source in plan_steps:
            upstream: StepExplanation = explain(source)
            causes = upstream.root_causes()
            if causes:
                shown = "; ".join(
                    cause.text if cause.step == source else f"{cause.step}: {cause.text}"
                    for cause in causes
                )
                text = f"input {source}: re-runs ({shown})"
            else:
                text = (
                    f"input {source}: a different result "
                    f"({_short(change.before)} -> {_short(change.after)}, cached)"
                )
            change = change.model_copy(update={"root_causes": causes, "text": text})
        chased.append(change)
    return StepExplanation(
        step=planned.name,
        key=planned.key,
        state="would run",
        forced=planned.forced,
        entry=EntryInfo.of(manifest),
        changes=chased,
    )


def _differences(manifest: Manifest, now: KeyIngredients, image: str) -> list[IngredientChange]:
    """Every ingredient of ``now`` that differs from what ``manifest`` was made with."""
    was = manifest.ingredients
    changes: list[IngredientChange] = []
    if was.image_id != now.image_id:
        if manifest.image == image:
            text = f"image {image}: rebuilt ({_short(was.image_id)} -> {_short(now.image_id)})"
        else:
            text = (
                f"image: {manifest.image} -> {image} "
                f"({_short(was.image_id)} -> {_short(now.image_id)})"
            )
        changes.append(
            IngredientChange(ingredient="image", before=was.image_id, after=now.image_id, text=text)
        )
    if was.command != now.command:
        changes.append(
            IngredientChange(
                ingredient="command",
                before=list(was.command),
                after=list(now.command),
                text=f"command: {' '.join(was.command)} -> {' '.join(now.command)}",
            )
        )
    if was.io != now.io:
        changes.append(
            IngredientChange(
                ingredient="io", before=was.io, after=now.io, text=f"io: {was.io} -> {now.io}"
            )
        )
    file_paths = set(was.file_hashes) | set(now.file_hashes)
    for name in _union(was.parameters, now.parameters):
        before, after = was.parameters.get(name), now.parameters.get(name)
        if before == after and type(before) is type(after):
            continue
        if _is_file_value(before, file_paths) and _is_file_value(after, file_paths):
            continue  # a file parameter's path inside the container; its content is below
        changes.append(
            IngredientChange(
                ingredient="parameter",
                name=name,
                before=before,
                after=after,
                text=_change_text(f"parameter {name}", name in was.parameters, before, after),
            )
        )
    changes += _keyed_changes(
        "file parameter",
        was.file_hashes,
        now.file_hashes,
        label=lambda path: f"file parameter {_file_label(path)}",
        changed=lambda old, new: f"content changed (sha256 {old[:12]}.. -> {new[:12]}..)",
        added=lambda new: f" (sha256 {new[:12]}..)",
    )
    changes += _keyed_changes(
        "env", was.env, now.env, label=lambda name: f"env {name}", changed="{!r} -> {!r}".format
    )
    if was.input_layout != now.input_layout:
        changes.append(
            IngredientChange(
                ingredient="input layout",
                before=was.input_layout,
                after=now.input_layout,
                text=f"input layout: {_LAYOUTS[was.input_layout]} -> {_LAYOUTS[now.input_layout]}",
            )
        )
    changes += _keyed_changes(
        "input",
        was.inputs,
        now.inputs,
        label=lambda name: f"input {name}",
        changed=lambda old, new: f"{_short(old)} -> {_short(new)}",
    )
    return changes


_LAYOUTS = {"whole": "all of /input", "folders": "a folder per input"}


def _keyed_changes(
    ingredient: Literal["file parameter", "env", "input"],
    was: Mapping[str, str],
    now: Mapping[str, str],
    *,
    label: Callable[[str], str],
    changed: Callable[[str, str], str],
    added: Callable[[str], str] = lambda new: "",
) -> list[IngredientChange]:
    """The changes of one mapping ingredient, name by name: added, removed or changed."""
    changes = []
    for name in _union(was, now):
        before, after = was.get(name), now.get(name)
        if before == after:
            continue
        if before is None:
            text = f"{label(name)} added{added(str(after))}"
        elif after is None:
            text = f"{label(name)} removed"
        else:
            text = f"{label(name)}: {changed(before, after)}"
        changes.append(
            IngredientChange(
                ingredient=ingredient, name=name, before=before, after=after, text=text
            )
        )
    return changes


def _union(first: Mapping[str, Any], second: Mapping[str, Any]) -> list[str]:
    return sorted(set(first) | set(second))


def _is_file_value(value: Any, paths: set[str]) -> bool:
    if isinstance(value, str):
        return value in paths or value.startswith(f"{PARAM_FILES_DIR}/")
    if isinstance(value, list):
        return all(_is_file_value(item, paths) for item in value)
    return False


def _file_label(container_path: str) -> str:
    """A file parameter's name from its container path: ``model`` for ``/param_files/model``,
    ``masks[0] (a.fits)`` for ``/param_files/masks/0-a.fits``."""
    relative = container_path.removeprefix(f"{PARAM_FILES_DIR}/")
    name, _, item = relative.partition("/")
    if not item:
        return name
    number, _, filename = item.partition("-")
    return f"{name}[{number}] ({filename})"


def _change_text(label: str, existed: bool, before: Any, after: Any) -> str:
    if not existed:
        return f"{label} added ({_value(after)})"
    if after is None:
        return f"{label} removed (was {_value(before)})"
    return f"{label}: {_value(before)} -> {_value(after)}"


def _value(value: Any) -> str:
    text = repr(value) if isinstance(value, str) else _plain(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _plain(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "null"
    return str(value)


def _short(identity: str) -> str:
    """``sha256:1e3c4f...`` or a bare key, shortened to 12 hex digits."""
    prefix, _, digest = identity.rpartition(":")
    return f"{prefix}:{digest[:12]}.." if prefix else f"{digest[:12]}.."
