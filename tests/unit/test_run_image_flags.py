"""``run-image``'s argument parser: a kliko.yml's fields become flags, shown as written."""

from __future__ import annotations

from pathlib import Path

import pytest

from kliko_async.engine.images import KlikoImage
from kliko_async.engine.runimage import gather_parameters, image_parser
from kliko_async.model.spec import KlikoSpec, load_spec, parse_spec

EXAMPLES = Path(__file__).resolve().parents[1] / "compat" / "kliko-examples"


def image(spec: KlikoSpec, ref: str = "test/image") -> KlikoImage:
    return KlikoImage(ref=ref, id="sha256:" + "0" * 64, spec=spec)


def test_help_texts_with_percent_signs_are_shown_as_written() -> None:
    """argparse %-formats help strings: a kliko.yml's '50%' must not break --help."""
    spec = (
        "schema_version: 3\nio: split\nsections:\n  - name: s\n    fields:\n"
        "      - {name: n, type: int, initial: 5, label: 'rate %', help_text: '50% of %(prog)s'}\n"
    )

    text = " ".join(image_parser(image(parse_spec(spec, "kliko.yml"))).format_help().split())

    assert "--n INT rate %; 50% of %(prog)s; default: 5" in text


@pytest.mark.parametrize("name", sorted(p.name for p in EXAMPLES.iterdir() if p.is_dir()))
def test_every_published_example_gets_a_flag_per_field(name: str) -> None:
    spec = load_spec(EXAMPLES / name / "kliko.yml")
    parser = image_parser(image(spec, f"kliko/{name}"))

    help_text = parser.format_help()

    for field in spec.fields():
        assert f"--{field} " in help_text


def test_a_dashed_field_name_is_a_dashed_flag() -> None:
    kliko_image = image(load_spec(EXAMPLES / "simms" / "kliko.yml"), "kliko/simms")
    options = image_parser(kliko_image).parse_args(
        ["kliko/simms", "--tel", "meerkat", "--synthesis-time", "2.5"]
    )

    assert gather_parameters(kliko_image, options) == {"tel": "meerkat", "synthesis-time": 2.5}


def test_a_field_named_like_a_folder_option_is_a_param_flag() -> None:
    spec = (
        "schema_version: 3\nio: split\nsections:\n  - name: s\n    fields:\n"
        "      - {name: output, type: str}\n      - {name: help, type: int}\n"
    )
    kliko_image = image(parse_spec(spec, "kliko.yml"))
    options = image_parser(kliko_image).parse_args(
        ["test/image", "--output", "out", "--param-output", "ms", "--param-help", "3"]
    )

    assert options.output == Path("out")
    assert gather_parameters(kliko_image, options) == {"output": "ms", "help": 3}


def test_a_flag_overrides_the_params_file_read_before_the_image() -> None:
    kliko_image = image(load_spec(EXAMPLES / "simms" / "kliko.yml"), "kliko/simms")
    options = image_parser(kliko_image).parse_args(
        ["kliko/simms", "--params", "p.yaml", "--tel", "meerkat"]
    )
    from_file = {"tel": "kat7", "synthesis-time": 2.5}

    # The file was read already (by the command, before the engine): not read again here.
    assert gather_parameters(kliko_image, options, from_file) == {
        "tel": "meerkat",
        "synthesis-time": 2.5,
    }
