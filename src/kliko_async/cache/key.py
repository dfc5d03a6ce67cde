"""The cache key: everything that determines a step's output, hashed.

Kliko 0.8 trusted a folder's existence, so changing a first step's parameters still served stale
later steps. Here a step's key hashes its image ID, the command it runs, its IO mode, its full
validated parameters, the content of every file parameter (as the container sees it), its
environment and the keys of its inputs, so a change anywhere upstream changes every key below it.
The step's ``user`` is deliberately not an ingredient: who runs a container changes the owner of
its files, not their content, and the same chain run by two people should share results.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

__all__ = ["CACHE_FORMAT_VERSION", "KeyIngredients", "cache_key"]

CACHE_FORMAT_VERSION = 2
"""Part of every key and every manifest; bump it when the meaning of an entry changes.

2: the command became an ingredient (every container runs ``/kliko``, as in Kliko 0.8).
"""


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
    inputs: dict[str, str] = Field(description="Input step name -> that step's cache key.")
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
