"""How a product was made: from an exported step folder (its marker names the key) or a cache key,
the chain file that makes it again, read off the manifests of its entry and of every entry
upstream of it.

Images are named by their immutable IDs and parameters are the full validated set, so run with
the same cache the chain is fully cached (no container starts), and elsewhere, with the same
images, it computes the same keys. A file parameter's content is known only by its hash: the
chain says which file (by SHA-256) to give, with the path as the step saw it.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

from kliko_async.cache.datahash import DATA_KEY_PREFIX
from kliko_async.cache.entry import Manifest
from kliko_async.cache.store import KEY_PATTERN, Cache
from kliko_async.errors import CacheError, ParameterError

EXPORT_MARKER = ".kliko-async-export"
"""The file in every ``<out>/<step>/`` that kliko-async wrote: the step and its cache key."""

_CHAIN_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")


def key_of(target: str, cache: Cache) -> str:
    """The key that ``target`` names: an exported step folder, an entry folder, or a key or a
    unique prefix of one."""
    path = Path(target)
    try:
        key = _key_of_folder(path, target)
    except OSError as error:  # a folder on the way you may not look into, a name too long
        raise ParameterError(
            f"cannot look at it: {error.strerror or error}",
            where=target,
            hint="Give a folder that 'kliko-async run --out' wrote, or a cache key.",
        ) from None
    return key or _key_of_key(target, cache)


def _key_of_folder(path: Path, target: str) -> str | None:
    """The key of an exported step folder or an entry folder; None if ``target`` is no path."""
    if (path / EXPORT_MARKER).is_file():
        try:
            key = str(json.loads((path / EXPORT_MARKER).read_text())["key"])
        except (OSError, ValueError, KeyError, TypeError) as error:
            raise CacheError(
                f"the export marker cannot be read ({error})", where=str(path / EXPORT_MARKER)
            ) from None
        return key
    if (path / "manifest.json").is_file() and KEY_PATTERN.fullmatch(path.name):
        return path.name
    if path.exists():
        raise ParameterError(
            "neither an exported step folder (it has no .kliko-async-export marker) nor a cache "
            "entry",
            where=target,
            hint="Give a folder that 'kliko-async run --out' wrote, or a cache key.",
        )
    return None


def _key_of_key(target: str, cache: Cache) -> str:
    """The key ``target`` is, or the one key it is the start of."""
    if not KEY_PATTERN.fullmatch(target):
        raise ParameterError(f"no such folder, and not a cache key: '{target}'")
    if cache.lookup(target) is not None:
        return target
    matches = [entry.key for entry in cache.entries() if entry.key.startswith(target)]
    if len(matches) != 1:
        found = "no entry" if not matches else f"{len(matches)} entries"
        raise ParameterError(f"{found} with a key starting '{target}'", where=str(cache.root))
    return matches[0]


def upstream_manifests(cache: Cache, key: str) -> list[Manifest]:
    """The manifests of ``key`` and of every entry it was made from, inputs first."""
    found: dict[str, Manifest] = {}

    def visit(wanted: str, needed_by: str | None) -> None:
        if wanted in found:
            return
        entry = cache.lookup(wanted)
        if entry is None:
            where = f" (an input of {needed_by[:12]})" if needed_by else ""
            raise CacheError(
                f"the cache holds no entry {wanted[:12]}{where}, so how it was made is unknown",
                where=str(cache.root),
                hint="Provenance is read from the cache that made the product; was it cleaned "
                "with 'cache gc'?",
            )
        for input_key in entry.manifest.ingredients.inputs.values():
            if not input_key.startswith(DATA_KEY_PREFIX):  # data: a host file or folder
                visit(input_key, wanted)
        found[wanted] = entry.manifest

    visit(key, None)
    return list(found.values())


def provenance_chain(cache: Cache, key: str) -> str:
    """A chain file (YAML) that makes the entry ``key`` again, with comments saying how."""
    manifests = upstream_manifests(cache, key)
    names = dict(_unique_names(manifests))
    steps: dict[str, dict[str, Any]] = {}
    notes: list[str] = []
    data: dict[str, dict[str, str]] = {}
    for manifest in manifests:
        for name, input_key in manifest.ingredients.inputs.items():
            if input_key.startswith(DATA_KEY_PREFIX) and input_key not in names:
                data_name = name if _CHAIN_NAME.match(name) else f"data{len(data) + 1}"
                names[input_key] = data_name
                data[data_name] = {"path": f"./{data_name}"}
                notes.append(
                    f"#   data {data_name}: give the file or folder whose data digest is "
                    f"{input_key.removeprefix(DATA_KEY_PREFIX)} (its path is not kept)"
                )
    for manifest in manifests:
        ingredients = manifest.ingredients
        step: dict[str, Any] = {"image": ingredients.image_id}
        inputs = [names[k] for k in ingredients.inputs.values()]
        if inputs:
            step["inputs"] = inputs
        if ingredients.parameters:
            step["params"] = dict(ingredients.parameters)
        if ingredients.env:
            step["env"] = dict(ingredients.env)
        steps[names[manifest.key]] = step
        # a lone input is keyed by its place (/input), not its name: renaming it changes nothing
        renamed = {n for n, k in ingredients.inputs.items() if names[k] != n and n[:1] != "/"}
        if renamed:
            listed = sorted(renamed)
            if len(listed) > 5:  # a consumer of a 2,000-way matrix: one 60 kB line, before
                listed = [*listed[:3], f"... ({len(renamed):,} in all)"]
            notes.append(
                f"#   (inputs {', '.join(listed)} of {names[manifest.key]} are renamed "
                "here, as a chain file cannot name them so: its key will differ)"
            )
        made = manifest.finished_at.strftime("%Y-%m-%d %H:%M:%S UTC")
        notes.append(
            f"#   {names[manifest.key]}: key {manifest.key[:12]}, image {manifest.image} "
            f"({ingredients.image_id[:19]}), made {made} by run {manifest.run_id or '?'}"
        )
        for path, digest in sorted(ingredients.file_hashes.items()):
            notes.append(f"#     file parameter {path}: give a file with sha256 {digest}")
    header = [
        f"# How cache entry {key} was made: {len(manifests)} step(s), inputs first.",
        "# Images are named by ID and parameters are complete, so with the same cache this",
        "# chain is fully cached, and elsewhere (with the same images) it makes the same keys.",
        *notes,
    ]
    document = {"data": data, "steps": steps} if data else {"steps": steps}
    body = yaml.safe_dump(document, sort_keys=False, allow_unicode=True, width=100)
    return "\n".join(header) + "\n" + body


def _unique_names(manifests: list[Manifest]) -> Iterator[tuple[str, str]]:
    """A chain step name for each entry: the name its consumers knew it by (which the key of a
    step with several inputs holds), else its own step's name; made unique and valid."""
    wanted: dict[str, str] = {}
    for manifest in manifests:
        for name, input_key in manifest.ingredients.inputs.items():
            wanted.setdefault(input_key, name)
    taken: set[str] = set()
    for manifest in manifests:
        candidates = [wanted.get(manifest.key, ""), manifest.step]
        base = next((c for c in candidates if _CHAIN_NAME.match(c)), _chain_name(manifest.step))
        name, number = base, 2
        while name in taken:
            name, number = f"{base}-{number}", number + 1
        taken.add(name)
        yield manifest.key, name


def _chain_name(name: str) -> str:
    """A matrix expansion's name (``image[weight=natural]``) as a plain step name."""
    cleaned = re.sub(r"[^A-Za-z0-9._-]+", "-", name).strip("-._")
    return (cleaned or "step")[:100]
