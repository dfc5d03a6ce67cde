"""The chain file's format: :class:`ChainFile`, :class:`StepSpec` and :class:`MatrixSpec`, as the
person writing the YAML sees them, and the JSON Schema published for editors.

These models only describe what may be written; :mod:`kliko_async.model.chain` turns a valid
file into a checked :class:`~kliko_async.model.chainmodel.Chain` (names, inputs, matrix expansion).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Any

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    PlainValidator,
    WithJsonSchema,
    model_validator,
)

from kliko_async.model.chainmodel import Resources, StepName, StepUser, check_env
from kliko_async.model.yamltext import yaml_kind

__all__ = ["ChainFile", "MatrixFile", "MatrixSpec", "StepSpec", "chain_json_schema"]

_JSON_SCHEMA_DIALECT = "https://json-schema.org/draft/2020-12/schema"


class MatrixFile(BaseModel):
    """A matrix parameter's values, read from a YAML file that holds a list."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    from_file: str = Field(
        min_length=1,
        description="Path of a YAML file holding a list of values, relative to the chain file.",
    )


def _matrix_values(value: object) -> list[Any] | MatrixFile:
    if isinstance(value, MatrixFile):
        return value
    if isinstance(value, list):
        if not value:
            raise ValueError("is an empty list; give at least one value")
        return value
    if isinstance(value, Mapping) and list(value) == ["from-file"]:
        path = value["from-file"]
        if isinstance(path, str) and path:
            return MatrixFile(from_file=path)
        raise ValueError(f"from-file is a {yaml_kind(path)}; give the path of a YAML file")
    raise ValueError(
        f"is a {yaml_kind(value)}; give a list of values, or {{from-file: PATH}} naming a "
        "YAML file that holds the list"
    )


MatrixValues = Annotated[
    list[Any] | MatrixFile,
    PlainValidator(_matrix_values),
    WithJsonSchema(
        {
            "anyOf": [
                {"type": "array", "minItems": 1},
                {
                    "type": "object",
                    "properties": {"from-file": {"type": "string", "minLength": 1}},
                    "required": ["from-file"],
                    "additionalProperties": False,
                },
            ],
            "description": "The values of one parameter: a list, or {from-file: PATH}.",
        }
    ),
]


class MatrixSpec(BaseModel):
    """``matrix:`` of a step: every other key is a parameter with a list of values, and the step
    runs once per combination (the product of the lists, minus ``exclude``, plus ``include``).

    With ``same-as: STEP`` the step instead runs once per expansion of the matrix step STEP,
    reading that expansion where it names STEP as an input (a per-branch continuation).
    """

    model_config = ConfigDict(extra="allow", frozen=True)

    __pydantic_extra__: dict[str, MatrixValues] = Field(init=False)

    include: list[dict[str, Any]] = Field(
        default_factory=list,
        description=(
            "Extra combinations, each a mapping of parameter -> one value, added after the "
            "product (as GitHub Actions' include, without merging into existing ones)."
        ),
    )
    exclude: list[dict[str, Any]] = Field(
        default_factory=list,
        description=(
            "Combinations to leave out: each mapping removes every combination whose values "
            "match all of its pairs; one that matches nothing is an error."
        ),
    )
    name: str | None = Field(
        default=None,
        min_length=1,
        description=(
            "A template for expansion names, such as 'img-{weight}': {parameter} is the value, "
            "{index} the combination's number from 1. Default: step[param=value,...]."
        ),
    )
    same_as: StepName | None = Field(
        default=None,
        alias="same-as",
        description=(
            "Pair one to one with the expansions of this matrix step instead of listing values."
        ),
    )

    @property
    def parameters(self) -> dict[str, list[Any] | MatrixFile]:
        """The matrix parameters and their values, in file order."""
        return dict(self.__pydantic_extra__ or {})

    @model_validator(mode="after")
    def _values_or_pairing(self) -> MatrixSpec:
        if self.same_as is not None and (self.parameters or self.include or self.exclude):
            raise ValueError(
                "'same-as' pairs with another matrix step's values, so it cannot be combined "
                "with parameter lists, 'include' or 'exclude'; keep 'same-as' (and 'name') only"
            )
        if self.same_as is None and not self.parameters and not self.include:
            raise ValueError(
                "lists no parameter; give at least one parameter with a list of values, "
                "such as  matrix: {weight: [natural, uniform]}"
            )
        return self


def _step_spec_schema(schema: dict[str, Any]) -> None:
    """Publish 'name', 'image' and 'build' as plain strings (null means "absent") and require one
    of 'image' and 'build'."""
    properties = schema["properties"]
    for key in ("name", "image", "build"):
        field = properties[key]
        kept = [option for option in field.pop("anyOf", []) if option.get("type") != "null"]
        if len(kept) == 1:
            field.update(kept[0])
    schema["oneOf"] = [{"required": ["image"]}, {"required": ["build"]}]


class StepSpec(BaseModel):
    """One step as written in the chain file. Give exactly one of ``image`` and ``build``."""

    model_config = ConfigDict(
        extra="forbid",
        frozen=True,
        json_schema_extra=_step_spec_schema,
    )

    name: StepName | None = Field(
        default=None,
        description=(
            "The step's name (list form only; in the mapping form the key is the name). "
            "Defaults to the last path component of the image without tag or digest, or to the "
            "build folder's name, made unique with -2, -3, ..."
        ),
    )
    image: str | None = Field(
        default=None,
        min_length=1,
        description="The Kliko image to run: a tag such as 'kliko/simms:0.1' or an image ID.",
    )
    build: str | None = Field(
        default=None,
        min_length=1,
        description=(
            "A Docker build context folder to build the image from, relative to the chain file."
        ),
    )
    params: dict[str, Any] = Field(
        default_factory=dict,
        description="Parameters for the image, checked against its kliko.yml.",
    )
    matrix: MatrixSpec | None = Field(
        default=None,
        description=(
            "Run the step once per combination of parameter values, such as "
            "{weight: [natural, uniform]}; each expansion is a step named "
            "step[weight=natural] (or by the 'name' template) with its own cache key. A step "
            "that names this one as an input receives every expansion, one subfolder each."
        ),
    )
    inputs: list[str] | None = Field(
        default=None,
        description=(
            "Names of the steps whose outputs this step reads. In the list form it defaults to "
            "the step before; in the mapping form to none."
        ),
    )
    retries: int = Field(
        default=0, ge=0, description="How many times to run the step again after a failure."
    )
    retry_backoff: float = Field(
        default=1.0,
        ge=0,
        allow_inf_nan=False,
        description="Seconds to wait before the first retry; the delay doubles each retry.",
    )
    timeout: float | None = Field(
        default=None,
        gt=0,
        allow_inf_nan=False,
        description="Seconds after which a running step is stopped and counted as failed, "
        "counted from its container's start (not while its Slurm job waits in the queue).",
    )
    resources: Resources = Field(
        default_factory=Resources, description="CPU, memory and GPU limits for the container."
    )
    user: StepUser = Field(
        default=None,
        min_length=1,
        description="The user to run the container as: a numeric uid or uid:gid, such as "
        "'1000:1000'.",
    )
    env: Annotated[dict[str, str], AfterValidator(check_env)] = Field(
        default_factory=dict,
        description="Extra environment variables for the container (values are strings).",
    )

    @model_validator(mode="after")
    def _image_or_build(self) -> StepSpec:
        if self.image is not None and self.build is not None:
            raise ValueError("gives both 'image' and 'build'; keep exactly one of them")
        if self.image is None and self.build is None:
            raise ValueError("gives neither 'image' nor 'build'; add exactly one of them")
        return self


def _chain_file_schema(schema: dict[str, Any]) -> None:
    """Publish step names as ``propertyNames`` so a mapping key that is not a safe name is invalid
    (pydantic writes ``patternProperties``, which lets other keys through unchecked)."""
    for option in schema["properties"]["steps"].get("anyOf", []):
        patterns = option.pop("patternProperties", None)
        if patterns and len(patterns) == 1:
            ((pattern, step),) = patterns.items()
            option["propertyNames"] = {**option.get("propertyNames", {}), "pattern": pattern}
            option["additionalProperties"] = step


class DataSpec(BaseModel):
    """One data input: a host file or folder."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    path: str | list[str] = Field(
        min_length=1,
        description="The file or folder on the host, or a list of them: one data input per "
        "path, NAME[last part of the path], read by steps as a matrix step's expansions are.",
    )


class ChainFile(BaseModel):
    """A kliko-async chain file: Kliko steps and the inputs that connect them into a DAG."""

    model_config = ConfigDict(extra="forbid", frozen=True, json_schema_extra=_chain_file_schema)

    steps: (
        Annotated[dict[StepName, StepSpec], Field(min_length=1)]
        | Annotated[list[StepSpec], Field(min_length=1)]
    ) = Field(
        description=(
            "The steps: a mapping of step names to steps, whose 'inputs' connect them, or a list "
            "of steps that run one after the other (each step's inputs default to the step "
            "before it)."
        )
    )
    data: dict[StepName, str | list[str] | DataSpec] | None = Field(
        default=None,
        description=(
            "Host files and folders the chain starts from, by name: steps list the name in "
            "their inputs. A relative path is relative to the chain file's folder. Each is "
            "keyed by its content (a file is read again only when its size, times or inode "
            "changed)."
        ),
    )
    vars: dict[str, Any] | None = Field(
        default=None,
        description=(
            "The chain's variables, by name: a value or a list, used in the steps' strings as "
            "${vars.NAME} (alone, the value with its type; inside text, as text) and set on the "
            "command line with --set NAME=VALUE."
        ),
    )


def chain_json_schema() -> dict[str, Any]:
    """The published JSON Schema of a chain file."""
    schema = ChainFile.model_json_schema()
    return {"$schema": _JSON_SCHEMA_DIALECT, **schema, "title": "kliko-async chain file"}
