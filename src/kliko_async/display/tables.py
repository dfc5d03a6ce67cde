"""Tables printed by ``validate`` and ``cache ls``."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from kliko_async.cache.entry import CacheEntry
from kliko_async.display.terminal import printable
from kliko_async.model.parameters import file_default
from kliko_async.model.spec import Field, KlikoSpec


def print_spec(spec: KlikoSpec, source: str, console: Console | None = None) -> None:
    """The parameters of a kliko.yml: name, type, default, required, help.

    Every text from the file (or its path) is escaped: Kliko's own examples write help such as
    ``val[unit]``, which rich would otherwise take for markup and drop; and made printable, as
    container logs are: a kliko.yml is someone else's text, and may hold escape sequences.
    """
    console = console or Console()
    title = _shown(f"{source}: {spec.name or 'unnamed'}")
    title += f" (schema {spec.schema_version}, {spec.io} IO)"
    table = Table(title=title, title_justify="left")
    for column in ("section", "name", "type", "default", "required", "help"):
        table.add_column(column)
    for section in spec.sections:
        for field in section.fields:
            kind = field.type
            if field.choices:
                kind += " (" + ", ".join(field.choices) + ")"
            cells = (
                section.name,
                field.name,
                kind,
                _default_of(field, spec),
                "yes" if field.required else "",
                "; ".join(p for p in (field.label, field.help_text) if p),
            )
            table.add_row(*map(_shown, cells))
    console.print(table)
    console.print(f"valid: {len(spec.fields())} parameter(s)")


def _shown(text: str) -> str:
    """``text`` as rich should print it: no markup, no escape sequences or control characters."""
    return escape(printable(text))


def _default_of(field: Field, spec: KlikoSpec) -> str:
    """The default as the container gets it; for files, where it is looked for (never the host)."""
    if field.initial is None:
        return ""
    if field.is_file():
        return f"{file_default(field, spec.io)!r} in the container (not a host file)"
    return repr(field.initial)


def print_entries(entries: list[CacheEntry], root: Path, console: Console | None = None) -> None:
    """Cache entries, newest first."""
    console = console or Console()
    table = Table(title=f"cache {root}", title_justify="left")
    for column in ("key", "step", "image", "finished", "took", "files"):
        table.add_column(column)
    now = datetime.now(UTC)
    for entry in sorted(entries, key=lambda e: e.manifest.finished_at, reverse=True):
        m = entry.manifest
        finished = m.finished_at if m.finished_at.tzinfo else m.finished_at.replace(tzinfo=UTC)
        ago = (now - finished).total_seconds()
        table.add_row(
            entry.key[:12],
            _shown(m.step),
            _shown(m.image),
            f"{_ago(ago)} ago",
            f"{m.duration_s:.1f}s",
            str(len(m.outputs)),
        )
    console.print(table)
    console.print(f"{len(entries)} entr{'y' if len(entries) == 1 else 'ies'}")


def _ago(seconds: float) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds / size:.0f}{unit}"
    return f"{seconds:.0f}s"
