"""``kliko-async report``: one self-contained HTML page of what a run did.

Inline CSS, SVG and a few lines of JavaScript; nothing is fetched, so the file can be mailed or
archived with the run's products. It shows the totals, the chain as a graph coloured by state
(:mod:`kliko_async.display.reportsvg`), a timeline of every step and a table of every step with
its image ID, key, parameters (and file hashes), exit code, log and, for a failure, its reason
and last lines. Expansions of a matrix step are folded under it.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from html import escape
from pathlib import Path

from pydantic import ValidationError

from kliko_async.cache.entry import Manifest
from kliko_async.cache.store import Cache
from kliko_async.display.reportsvg import STATE_COLOURS, graph_svg, group_steps, timeline_svg
from kliko_async.display.runrecord import RunRecord, StepRecord, runs_folder
from kliko_async.display.terminal import printable
from kliko_async.display.wording import counted, describe_usage
from kliko_async.errors import CacheError, KlikoError, ParameterError, os_error_text

_STYLE = """
body { font: 14px/1.4 system-ui, sans-serif; margin: 1.5em; color: #222; }
h1 { font-size: 1.4em; } h2 { font-size: 1.15em; margin-top: 1.6em; }
code, pre { font: 12px/1.35 ui-monospace, monospace; }
.totals span { display: inline-block; margin-right: 1.2em; }
.scroll { overflow-x: auto; border: 1px solid #ddd; padding: 6px; }
table { border-collapse: collapse; width: 100%; }
th, td { text-align: left; padding: 3px 8px; border-bottom: 1px solid #eee; vertical-align: top; }
.state { color: #fff; border-radius: 4px; padding: 0 6px; }
pre.last { background: #fbeaea; padding: 6px; white-space: pre-wrap; margin: 4px 0; }
details > summary { cursor: pointer; }
tr.hit { background: #fff8d6; }
"""

_SCRIPT = """
document.querySelectorAll('[data-step]').forEach(function (node) {
  node.addEventListener('click', function () {
    var row = document.getElementById('step-' + node.getAttribute('data-step'));
    if (!row) return;
    var folded = row.closest('details'); if (folded) folded.open = true;
    row.scrollIntoView({block: 'center'});
    row.classList.add('hit'); setTimeout(function () { row.classList.remove('hit'); }, 1500);
  });
});
"""


def latest_record(cache_root: Path) -> Path:
    """The newest run record in the cache folder."""
    records = sorted(runs_folder(cache_root).glob("*.json"), key=lambda p: p.stat().st_mtime)
    if not records:
        raise CacheError(
            "no run has been recorded in this cache folder yet",
            where=str(cache_root),
            hint="Run a chain first (kliko-async run CHAIN), or give --cache-dir.",
        )
    return records[-1]


def find_record(cache_root: Path, run_id: str | None) -> RunRecord:
    """The record of ``run_id`` (or a unique prefix of it), else of the latest run."""
    if run_id is None:
        path = latest_record(cache_root)
    else:
        records = runs_folder(cache_root).glob("*.json")  # the ID is text, never a pattern
        matches = sorted(path for path in records if path.name.startswith(run_id))
        if len(matches) != 1:
            found = "no run" if not matches else f"{len(matches)} runs"
            raise ParameterError(f"{found} with an ID starting '{run_id}'", where=str(cache_root))
        path = matches[0]
    try:
        return RunRecord.model_validate_json(path.read_bytes())
    except (OSError, ValidationError) as error:
        raise CacheError(f"the run record cannot be read: {error}", where=str(path)) from None


def render(record: RunRecord, manifests: Mapping[str, Manifest]) -> str:
    """The page; ``manifests`` by key, for the steps whose entry is in the cache."""
    steps = record.steps
    title = f"kliko-async run {record.run_id}"
    return "".join(
        [
            "<!doctype html><html lang='en'><head><meta charset='utf-8'>",
            f"<title>{escape(title)}</title><style>{_STYLE}</style></head><body>",
            f"<h1>Run <code>{escape(record.run_id)}</code> of "
            f"<code>{escape(printable(record.source))}</code></h1>",
            _totals(record),
            "<h2>Chain</h2><div class='scroll' id='graph'>",
            graph_svg(steps),
            "</div><h2>Timeline</h2><div class='scroll' id='timeline'>",
            timeline_svg(steps, record.wall_s),
            "</div><p>",
            " ".join(
                f"<span class='state' style='background:{colour}'>{state}</span>"
                for state, colour in STATE_COLOURS.items()
            ),
            " bars: grey from queued to running (waiting for inputs, a job slot, a lock or "
            "resources, then starting the container), light blue copying inputs into /work, "
            "dark green publishing the outputs to the cache, "
            "purple building the image; a diamond is a cache hit.</p>",
            "<h2>Steps</h2>",
            _step_tables(steps, manifests),
            f"<script>{_SCRIPT}</script></body></html>\n",
        ]
    )


def _totals(record: RunRecord) -> str:
    tally: dict[str, int] = {}
    for step in record.steps:
        tally[step.state] = tally.get(step.state, 0) + 1
    outcome = {True: "ok", False: "FAILED", None: "did not finish"}[record.ok]
    started = record.started.strftime("%Y-%m-%d %H:%M:%S UTC") if record.started else "?"
    wall = f"{record.wall_s:.1f}s" if record.wall_s is not None else "?"
    items = [
        f"<span><b>{outcome}</b></span>",
        f"<span>started {started}</span>",
        f"<span>wall time {wall}</span>",
        f"<span>{counted(len(record.steps), 'step')}: "
        + ", ".join(f"{n} {s}" for s, n in sorted(tally.items()))
        + "</span>",
        f"<span>the cache saved {record.saved_s:.1f}s</span>",
        f"<span>up to {record.jobs} at once</span>",
    ]
    return f"<p class='totals' id='totals'>{''.join(items)}</p>"


def _step_tables(steps: Sequence[StepRecord], manifests: Mapping[str, Manifest]) -> str:
    """One table of the steps in order; the expansions of a matrix step folded under it."""
    parts: list[str] = []
    loose: list[StepRecord] = []
    for group in group_steps(steps):
        if len(group.steps) == 1:
            loose.extend(group.steps)
            continue
        if loose:
            parts.append(_table(loose, manifests))
            loose = []
        parts.append(
            f"<details class='matrix' data-matrix='{escape(group.name)}'>"
            f"<summary><b>{escape(group.name)}</b>: {len(group.steps)} expansions "
            f"({escape(group.counts())})</summary>{_table(group.steps, manifests)}</details>"
        )
    if loose:
        parts.append(_table(loose, manifests))
    return "".join(parts)


def _table(steps: Sequence[StepRecord], manifests: Mapping[str, Manifest]) -> str:
    rows = [
        "<table><tr><th>step</th><th>state</th><th>time</th><th>used</th><th>exit</th>"
        "<th>image</th><th>key</th><th>parameters</th><th>log</th></tr>"
    ]
    for step in steps:
        manifest = manifests.get(step.key or "")
        rows.append(
            f"<tr id='step-{escape(step.name)}' class='step' data-state='{step.state}'>"
            f"<td>{escape(step.name)}</td>"
            f"<td><span class='state' style='background:{STATE_COLOURS[step.state]}'>"
            f"{step.state}</span>{_attempts(step)}</td>"
            f"<td>{_time(step, manifest)}</td>"
            f"<td class='usage'>{_usage(step, manifest)}</td>"
            f"<td>{'' if step.exit_code is None else step.exit_code}</td>"
            f"<td>{_image(step, manifest)}</td>"
            f"<td><code>{escape((step.key or '')[:12])}</code></td>"
            f"<td>{_parameters(step, manifest)}</td>"
            f"<td>{_log(step)}</td></tr>"
        )
        if step.state in ("failed", "skipped", "cancelled") and (step.reason or step.last_lines):
            last = "\n".join(printable(line) for line in step.last_lines)
            rows.append(
                f"<tr class='failure' data-step='{escape(step.name)}'><td></td>"
                f"<td colspan='8'>{escape(printable(step.reason or ''))}"
                + (f"<pre class='last'>{escape(last)}</pre>" if last else "")
                + "</td></tr>"
            )
    rows.append("</table>")
    return "".join(rows)


def _attempts(step: StepRecord) -> str:
    return f" <small>{step.attempts} attempts</small>" if step.attempts > 1 else ""


def _time(step: StepRecord, manifest: Manifest | None) -> str:
    if step.state == "cached":
        return f"cached (took {step.saved_s:.1f}s)"
    if step.started_at is not None and step.ended_at is not None:
        return f"{step.ended_at - step.started_at:.1f}s"
    return ""


def _usage(step: StepRecord, manifest: Manifest | None) -> str:
    usage = step.usage or (manifest.usage if manifest is not None else None)
    return escape(describe_usage(usage)).replace(", ", "<br>") if usage is not None else ""


def _image(step: StepRecord, manifest: Manifest | None) -> str:
    image_id = manifest.ingredients.image_id if manifest is not None else step.image_id
    shown = escape(printable(step.image))
    return f"{shown}<br><code>{escape(image_id[:19])}</code>" if image_id else shown


def _parameters(step: StepRecord, manifest: Manifest | None) -> str:
    if manifest is not None:
        ingredients = manifest.ingredients
        parameters, file_hashes = ingredients.parameters, ingredients.file_hashes
        env = "".join(f"<br>env <code>{escape(k)}</code>" for k in sorted(ingredients.env))
    else:
        parameters, file_hashes, env = step.parameters, step.file_hashes, ""
    if not parameters and not file_hashes:
        return ""
    text = json.dumps(parameters, indent=1, sort_keys=True, default=str)
    files = "".join(
        f"<br><code>{escape(path)}</code> sha256 <code>{escape(digest[:16])}</code>"
        for path, digest in sorted(file_hashes.items())
    )
    return (
        f"<details><summary>{counted(len(parameters), 'parameter')}</summary>"
        f"<pre>{escape(printable(text))}</pre>{files}{env}</details>"
    )


def _log(step: StepRecord) -> str:
    return f"<code>{escape(step.log_path)}</code>" if step.log_path else ""


def check_report_target(target: Path, flag: str = "--report") -> None:
    """Refuse, before a run, a ``--report`` that could not be written after it: its folder
    missing or not a folder, or a folder in its place (``flag``: the option that gave it)."""
    folder = target.parent
    try:
        is_folder, folder_is_folder, folder_exists = (
            target.is_dir(),
            folder.is_dir(),
            folder.exists(),
        )
    except OSError as error:  # a folder on the way you may not look into, a name too long
        raise ParameterError(
            f"cannot look at it: {os_error_text(error)}",
            where=f"{flag} {target}",
            hint="Give a file in a folder you can write.",
        ) from None
    if is_folder:
        problem, hint = "is a folder", "Give the report a file name, such as report.html."
    elif not folder_is_folder:
        missing = "" if folder_exists else " (it does not exist)"
        problem, hint = f"{folder} is not a folder{missing}", "Give a file in an existing folder."
    elif not os.access(folder, os.W_OK):
        problem, hint = f"cannot write in {folder}", "Give a file in a folder you can write."
    else:
        return
    raise ParameterError(problem, where=f"{flag} {target}", hint=hint)


def write_report(cache: Cache, run_id: str | None, target: Path) -> Path:
    """Write the report of ``run_id`` (default: the latest run) to ``target``; its path."""
    record = find_record(cache.root, run_id)
    manifests: dict[str, Manifest] = {}
    for step in record.steps:
        if step.key and step.state in ("ran", "cached"):
            entry = cache.lookup(step.key)
            if entry is not None:
                manifests[step.key] = entry.manifest
    page = render(record, manifests)
    try:
        target.write_text(page, encoding="utf-8")
    except OSError as error:
        raise KlikoError(
            f"could not write the report ({os_error_text(error)})", where=str(target)
        ) from None
    return target
