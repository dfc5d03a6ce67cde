"""``kliko-async run-image``: Kliko 0.8's ``kliko-run``, one image with typed parameter flags.

The image's kliko.yml becomes an argument parser (``--n 5``, ``--mode fast``), the parameters
are validated, the container runs with its logs streamed to this terminal, and the exit status
is the container's. No cache: the outputs go where ``--output`` / ``--work`` say.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from kliko_async.engine.images import KlikoImage
from kliko_async.engine.workspace import build_job, folder_problem
from kliko_async.errors import ParameterError, os_error_text, shown
from kliko_async.model.chainmodel import check_user
from kliko_async.model.inputfiles import InputFileError, read_input_file
from kliko_async.model.parameters import parse_cli_value, validate_parameters
from kliko_async.model.spec import Field
from kliko_async.model.yamltext import MAX_INTEGER_DIGITS, YamlTextError, parse_yaml_bytes
from kliko_async.runtime.base import LABEL_PREFIX, OWNER_LABEL, Runtime, Stream, owner_label
from kliko_async.runtime.inflight import InFlight, under_way

_RESERVED = {"input", "output", "work", "params", "user", "help", "image", "cache-dir"}


def image_parser(
    image: KlikoImage, printable: Callable[[str], str] = str
) -> argparse.ArgumentParser:
    """An argument parser for ``image``: its IO folders plus one flag per kliko.yml field.

    Every text from the kliko.yml goes through ``printable`` (the CLI passes its terminal
    sanitiser): the image is someone else's, and its help may hold escape sequences.
    """
    spec = image.spec
    parser = argparse.ArgumentParser(
        prog=printable(f"kliko-async run-image {image.ref}"),
        description=printable(spec.description or spec.name or image.ref),
    )
    parser.add_argument("image", help=argparse.SUPPRESS)
    io = parser.add_argument_group(f"folders ({spec.io} IO)")
    if spec.io == "split":
        io.add_argument("--input", type=Path, help="folder mounted read-only at /input")
        io.add_argument(
            "--output", type=Path, default=Path("output"), help="folder for /output (./output)"
        )
    else:
        io.add_argument(
            "--work", type=Path, default=Path("work"), help="folder mounted at /work (./work)"
        )
    io.add_argument("--params", type=Path, help="parameters from a JSON or YAML file")
    io.add_argument("--user", help="run as this uid:gid (default: yours)")
    io.add_argument("--cache-dir", type=Path, help="where image specs are remembered")
    group = parser.add_argument_group("parameters of this image")
    for field in spec.fields().values():
        flag = field.name if field.name not in _RESERVED else f"param-{field.name}"
        group.add_argument(
            f"--{flag}",
            dest=f"param__{field.name}",
            metavar=printable(_metavar(field)),
            help=printable(_help(field)),
        )
    return parser


def _metavar(field: Field) -> str:
    if field.type == "choice" and field.choices:
        return "{" + ",".join(field.choices) + "}"
    return field.type.upper().replace("[", "_").replace("]", "")


def _help(field: Field) -> str:
    parts = [p for p in (field.label, field.help_text) if p]
    if field.initial is not None:
        parts.append(f"default: {shown(field.initial)}")
    elif field.required:
        parts.append("required")
    if field.is_list():
        parts.append("comma-separated")
    return ("; ".join(parts) or field.type).replace("%", "%%")  # argparse %-formats help


def gather_parameters(
    image: KlikoImage, options: argparse.Namespace, from_file: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """Parameters from ``--params FILE`` (``from_file``: that file, read already) overridden by
    per-parameter flags."""
    params: dict[str, Any] = dict(from_file or {})
    if from_file is None and options.params is not None:
        params.update(read_params_file(options.params))
    fields = image.spec.fields()
    for name, value in vars(options).items():
        if name.startswith("param__") and value is not None:
            field_name = name.removeprefix("param__")
            params[field_name] = parse_cli_value(fields[field_name], value)
    return params


def read_params_file(path: Path) -> dict[str, Any]:
    """The mapping in a ``--params`` file: bounded as every input, and a key given twice is an
    error (as in a chain file), not a silent choice of the last."""
    where = f"--params {path}"
    try:
        raw = read_input_file(path)
        data = _parse_json(raw) if path.suffix == ".json" else parse_yaml_bytes(raw)
    except (InputFileError, YamlTextError) as error:
        raise ParameterError(error.message, where=where, hint=error.hint) from None
    if not isinstance(data, dict):
        raise ParameterError("must hold a mapping of parameter names to values", where=where)
    return data


def _parse_json(raw: bytes) -> Any:
    def unique(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        seen: dict[str, Any] = {}
        for key, value in pairs:
            if key in seen:
                raise YamlTextError(
                    f"gives {shown(key)} twice; JSON would silently keep only the last one",
                    hint="Remove or rename one of them.",
                )
            seen[key] = value
        return seen

    def integer(text: str) -> int:
        if len(text.lstrip("-")) > MAX_INTEGER_DIGITS:
            raise YamlTextError(
                f"holds an integer of {len(text.lstrip('-'))} digits, longer than the "
                f"{MAX_INTEGER_DIGITS} digits allowed",
                hint="Quote it if it is text, such as an identifier.",
            )
        return int(text)

    try:
        return json.loads(raw, object_pairs_hook=unique, parse_int=integer)
    except (ValueError, RecursionError) as error:  # UnicodeDecodeError is a ValueError
        raise YamlTextError(
            f"is not valid JSON: {shown(str(error))}", hint="Fix the JSON syntax there."
        ) from None


async def run_single_image(
    runtime: Runtime,
    image: KlikoImage,
    options: argparse.Namespace,
    from_file: Mapping[str, Any] | None = None,
) -> int:
    """Run ``image`` once with ``options`` (parsed by :func:`image_parser`); ``from_file``: the
    ``--params`` file, if read already (:func:`read_params_file`). The container's exit status."""
    params = validate_parameters(
        image.spec, gather_parameters(image, options, from_file), where=f"image {image.ref}"
    )
    if options.user is not None:
        try:
            check_user(options.user)
        except ValueError as error:
            raise ParameterError(str(error), where=f"--user {options.user}") from None
    folder = options.output if image.spec.io == "split" else options.work
    make_folder(folder, "--output" if image.spec.io == "split" else "--work")
    inputs = {"input": options.input} if getattr(options, "input", None) else {}
    if inputs:
        try:
            is_folder = inputs["input"].is_dir()
        except OSError as error:  # a folder on the way you may not look into, a name too long
            raise ParameterError(
                f"cannot look at it: {os_error_text(error)}", where=f"--input {inputs['input']}"
            ) from None
        if not is_folder:
            raise ParameterError("is not a folder", where=f"--input {inputs['input']}")
    with (
        tempfile.TemporaryDirectory(prefix="kliko-run-") as scratch,
        under_way(InFlight("run-image's parameters", folder=Path(scratch), next_run_removes=False)),
    ):
        job = build_job(
            image,
            params,
            scratch=Path(scratch),
            output=folder,
            inputs=inputs,
            user=options.user,
            labels={OWNER_LABEL: owner_label(), f"{LABEL_PREFIX}.step": "run-image"},
        )
        exited = await runtime.run(job, on_log=_print_line)
    if exited.oom_killed:
        print("kliko-async: the container ran out of memory", file=sys.stderr)
    return exited.exit_code


def make_folder(folder: Path, flag: str) -> None:
    """Create ``folder`` (given as ``flag``) if missing; a clear error if it cannot be one."""
    problem = folder_problem(folder, "so the container's files cannot be written there")
    if problem is not None:
        raise ParameterError(
            problem,
            where=f"{flag} {folder}",
            hint=f"Give {flag} a folder you can write (it is created if missing).",
        )
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise ParameterError(
            f"cannot create the folder: {os_error_text(error)}",
            where=f"{flag} {folder}",
            hint=f"Give {flag} a folder you can write (it is created if missing).",
        ) from None


def _print_line(stream: Stream, text: str, at: str | None = None, /) -> None:
    """The container's own line, byte for byte, to this process's stdout or stderr."""
    out = sys.stdout if stream == "stdout" else sys.stderr
    out.flush()
    out.buffer.write(text.encode("utf-8", "surrogateescape") + b"\n")
    out.buffer.flush()
