"""The cache key: everything that determines a step's output, hashed.

Kliko 0.8 trusted a folder's existence, so changing a first step's parameters still served stale
later steps. Here a step's key hashes its image ID, the command it runs, its IO mode, its full
validated parameters, the content of every file parameter (as the container sees it), its
environment and the keys of its inputs, so a change anywhere upstream changes every key below it.
Inputs are named as the container sees them: a lone input is all of ``/input`` (or ``/work``),
so the step that made it is no ingredient (renaming it re-runs nothing), while several inputs are
in folders named after their steps, which the container does see. The step's ``user`` is
deliberately not an ingredient: who runs a container changes the owner of its files, not their
content, and the same chain run by two people should share results.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

__all__ = ["CACHE_FORMAT_VERSION", "LONE_INPUT", "KeyIngredients", "cache_key"]

CACHE_FORMAT_VERSION = 3
"""Part of every key and every manifest; bump it when the meaning of an entry changes.

2: the command became an ingredient (every container runs ``/kliko``, as in Kliko 0.8).
3: inputs are named as the container sees them: a lone input as ``/input`` (no longer by its
step's name, which the container never sees), several by their folder names; the layout
(``input_layout``) became an ingredient of its own (a one-value matrix consumer's lone input,
in its own folder, was keyed as ``name/`` before).
"""

LONE_INPUT = "/input"
"""The name a lone input has in :attr:`KeyIngredients.inputs`: where it is, not who made it."""


class KeyIngredients(BaseModel):
    """Everything that determines a step's output; :func:`cache_key` hashes it.

    Every entry's manifest records these, so an entry can be explained (which ingredient
    differs from a step's plan) and re-keyed later.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    image_id: str = Field(description="The image's immutable ID (config digest), not its tag.")
    command: tuple[str, ...] = Field(description="What the container runs.")
    io: Literal["split", "join"]
    parameters: dict[str, Any] = Field(description="The full validated parameter set.")
    file_hashes: dict[str, str] = Field(
        description="Container path of each file parameter -> SHA-256 of the copy it sees."
    )
    inputs: dict[str, str] = Field(
        description="Each input as the container sees it -> that input's cache key: "
        "'/input' for a lone input (all of /input, or of /work under join IO), else the name of "
        "the folder it is in (/input/<name>/ or /work/<name>/), which is its step's name."
    )
    input_layout: Literal["whole", "folders"] = Field(
        description="'whole': no input, or a lone one that is all of /input (or /work); "
        "'folders': every input in a folder named after its step (several inputs, or a "
        "consumer of a matrix step, even of one expansion)."
    )
    env: dict[str, str] = Field(default_factory=dict, description="The step's environment.")


def cache_key(ingredients: KeyIngredients) -> str:
    """The hex SHA-256 of the canonical JSON of ``ingredients`` and :data:`CACHE_FORMAT_VERSION`.

    Canonical means sorted keys, no optional whitespace and ASCII only, so the order in which
    parameters or inputs were given never matters, while every name and value does.
    """
    payload = {
        "cache_format_version": CACHE_FORMAT_VERSION,
        "ingredients": ingredients.model_dump(mode="json"),
    }
    text = json.dumps(payload, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(text.encode("ascii")).hexdigest()
