"""Kliko's own published examples, built the upstream way and run as Kliko 0.8 runs them.

The kliko.yml files are Kliko's, byte for byte (tests/compat/kliko-examples/README.md); the images
are made as Kliko makes its examples: ``ADD kliko.yml /``, ``ADD kliko /`` and no ``CMD``, so
they run only because kliko-async runs ``/kliko`` itself, as Kliko 0.8's
``create_container(..., command='/kliko')`` does. Each step copies its /parameters.json into its
output, so every test can check what the step was given as well as what it wrote. They are run
the seed's two ways: ``kliko-run``-style (``run-image IMAGE --output D --input D --PARAM V``)
and ``run_chain([(image, params), ...])``.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from test_validate import flat, parameter_names

import kliko_async
from kliko_async.engine.exports import EXPORT_MARKER

if TYPE_CHECKING:
    from conftest import KlikoCli

Creations = Callable[..., list[dict[str, str]]]

pytestmark = [pytest.mark.docker]

ROOT = Path(__file__).resolve().parents[2]
COMPAT = ROOT / "tests" / "compat"
EXAMPLES = COMPAT / "kliko-examples"
FIELDS = {
    "simms": ["name", "tel", "dir", "synthesis-time", "dtime", "freq0", "dfreq", "nchan"],
    "meqtree-pipeliner": ["pbeam", "reciever_gains", "sefd", "addnoise", "skymodel"],
    "wsclean": ["weight"],
    "minimal": ["choice", "string", "float", "file", "int"],
    "fitsdoublerjoined": ["pattern", "factor"],
}
"""Every example's fields, in the order of its kliko.yml."""

ENTRYPOINT_IMAGE = "kliko-compat/simms-entrypoint"

# What the steps of simms -> meqtree-pipeliner -> wsclean are given and write, as the container
# saw it: parameters.json holds every field with a value, defaults included (floats as floats).
SIMMS_PARAMS = {
    "dfreq": 50.0,
    "dtime": 10.0,
    "freq0": 700.0,
    "nchan": 1,
    "synthesis-time": 2.5,
    "tel": "meerkat",
}
SIMMS_TABLE = (
    "--dfreq=50.0\n--dtime=10.0\n--freq0=700.0\n--nchan=1\n--synthesis-time=2.5\n--tel=meerkat\n"
)
MEQTREE_PARAMS = {
    "addnoise": True,
    "pbeam": False,
    "reciever_gains": False,
    "sefd": 831,
    "skymodel": "s-cubed_1deg_400uJy.lsm.html",
}
CORRECTED_DATA = (
    "skymodel=s-cubed_1deg_400uJy.lsm.html\nsefd=831\naddnoise=true\npbeam=false\n"
    "reciever_gains=false\n"
)
MS = "meerkat_2.5h.MS"
IMAGE_HEADER = f"MS = {MS}\n" + "".join(f"HISTORY {line}\n" for line in CORRECTED_DATA.split())


def wsclean_image(weight: str, pixels: str = "1\n2.5\n-4\n") -> str:
    return f"WEIGHT = {weight}\n{IMAGE_HEADER}{pixels}"


def simms_output() -> dict[str, Any]:
    return {"simms.parameters.json": SIMMS_PARAMS, f"{MS}/table.info": SIMMS_TABLE}


def meqtree_output() -> dict[str, Any]:
    return {
        "meqtree-pipeliner.parameters.json": MEQTREE_PARAMS,
        f"{MS}/table.info": SIMMS_TABLE,
        f"{MS}/CORRECTED_DATA": CORRECTED_DATA,
    }


def wsclean_output(weight: str) -> dict[str, Any]:
    return {
        "wsclean.parameters.json": {"weight": weight},
        "wsclean-image.fits": wsclean_image(weight),
        f"{MS}/table.info": SIMMS_TABLE,
        f"{MS}/CORRECTED_DATA": CORRECTED_DATA,
    }


def contents(folder: Path) -> dict[str, Any]:
    """Every file under ``folder``: its text, or for ``*.json`` its parsed value.

    The marker of an export (``--out``) is kliko-async's, not the step's, and left out.
    """
    found: dict[str, Any] = {}
    marker = folder / EXPORT_MARKER
    for path in sorted(p for p in folder.rglob("*") if p.is_file() and p != marker):
        text = path.read_text()
        found[path.relative_to(folder).as_posix()] = (
            json.loads(text) if path.suffix == ".json" else text
        )
    return found


def run_image(kliko: KlikoCli, command: str) -> subprocess.CompletedProcess[str]:
    """``kliko-async run-image`` + ``command``, split as a shell would: as the seed's kliko-run."""
    return kliko("run-image", *shlex.split(command))


def docker_build(tag: str, context: Path) -> None:
    done = subprocess.run(
        ["docker", "build", "-q", "-t", tag, str(context)], capture_output=True, text=True
    )
    assert done.returncode == 0, f"building {tag} failed:\n{done.stdout}{done.stderr}"


@pytest.fixture(scope="session")
def compat_images(example_images: None) -> dict[str, str]:
    """Build ``kliko-compat/<example>`` (and the ENTRYPOINT variant) once; example -> tag."""
    tags = {name: f"kliko-compat/{name}" for name in FIELDS}
    for name, tag in tags.items():
        docker_build(tag, EXAMPLES / name)
    docker_build(ENTRYPOINT_IMAGE, COMPAT / "entrypoint")  # FROM kliko-compat/simms
    return tags


# -- validate ----------------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(FIELDS))
def test_validate_each_published_kliko_yml_file(kliko: KlikoCli, name: str) -> None:
    done = kliko("validate", EXAMPLES / name / "kliko.yml")

    assert done.returncode == 0, done.stderr
    assert parameter_names(done.stdout) == FIELDS[name]
    assert f"valid: {len(FIELDS[name])} parameter(s)" in done.stdout


@pytest.mark.parametrize("name", list(FIELDS))
def test_validate_each_image_built_the_upstream_way(
    kliko: KlikoCli, tmp_path: Path, compat_images: dict[str, str], name: str
) -> None:
    done = kliko("validate", compat_images[name], "--cache-dir", tmp_path / "cache")

    assert done.returncode == 0, done.stderr
    assert parameter_names(done.stdout) == FIELDS[name]
    assert f"image kliko-compat/{name}" in flat(done.stdout)


def test_validate_shows_help_texts_and_paths_as_written(kliko: KlikoCli, tmp_path: Path) -> None:
    """simms's help texts hold ``val[unit]``: text from a kliko.yml is not terminal markup."""
    folder = tmp_path / "[v2]"
    folder.mkdir()
    (folder / "kliko.yml").write_bytes((EXAMPLES / "simms" / "kliko.yml").read_bytes())
    kliko.env["COLUMNS"] = "250"  # wide enough for every help text on one line of the table

    done = kliko("validate", folder / "kliko.yml")

    assert done.returncode == 0, done.stderr
    assert f"{folder}/kliko.yml: simms (schema 3, split IO)" in done.stdout
    assert "start frequency; Specify as val[unit]. E.g 700MHz, not unit => Hz" in done.stdout
    assert "synthesis-time" in parameter_names(done.stdout)


# -- run-image, as kliko-run -------------------------------------------------------------------


@pytest.mark.usefixtures("compat_images")
def test_the_seeds_kliko_run_chain_by_hand(kliko: KlikoCli, tmp_path: Path) -> None:
    """kliko-run kliko/simms --output simms --tel meerkat, then each next step --input the last."""
    simms, meqtree, wsclean = tmp_path / "simms", tmp_path / "meqtree", tmp_path / "wsclean"

    first = run_image(
        kliko, f"kliko-compat/simms --output {simms} --tel meerkat --synthesis-time 2.5"
    )
    assert first.returncode == 0, first.stderr
    assert contents(simms) == simms_output()
    assert f"simms: calling simms {' '.join(SIMMS_TABLE.split())}\n" in first.stdout

    second = run_image(kliko, f"kliko-compat/meqtree-pipeliner --input {simms} --output {meqtree}")
    assert second.returncode == 0, second.stderr
    assert contents(meqtree) == meqtree_output()

    third = run_image(
        kliko, f"kliko-compat/wsclean --input {meqtree} --output {wsclean} --weight briggs"
    )
    assert third.returncode == 0, third.stderr
    assert contents(wsclean) == wsclean_output("briggs")
    assert f"-weight briggs -tempdir /output -name /output/wsclean /output/{MS}" in third.stdout
    assert contents(simms) == simms_output(), "a step's input is never changed"


@pytest.mark.usefixtures("compat_images")
def test_flags_of_every_type_reach_parameters_json(kliko: KlikoCli, tmp_path: Path) -> None:
    out = tmp_path / "out"

    done = run_image(
        kliko,
        f"kliko-compat/meqtree-pipeliner --output {out} --addnoise false --pbeam yes --sefd 420"
        " --skymodel nvss1deg.lsm.html",
    )

    assert done.returncode == 0, done.stderr
    assert contents(out) == {
        "meqtree-pipeliner.parameters.json": {
            "addnoise": False,
            "pbeam": True,
            "reciever_gains": False,
            "sefd": 420,
            "skymodel": "nvss1deg.lsm.html",
        }
    }, "no input given: an empty /input, so nothing to simulate into"


@pytest.mark.usefixtures("compat_images")
def test_minimal_gets_its_file_parameter_at_param_files(kliko: KlikoCli, tmp_path: Path) -> None:
    beam = tmp_path / "beam.txt"
    beam.write_text("beam 1\n")
    out = tmp_path / "out"

    done = run_image(
        kliko,
        f"kliko-compat/minimal --output {out} --file {beam} --int 7 --string abcdefghij"
        " --choice first",
    )

    assert done.returncode == 0, done.stderr
    given = {
        "choice": "first",
        "file": "/param_files/file",
        "float": 0.0,
        "int": 7,
        "string": "abcdefghij",
    }
    listing = (
        'the parameters: {  "choice": "first",  "file": "/param_files/file",  "float": 0.0,'
        '  "int": 7,  "string": "abcdefghij"}\n'
        "content of /input: \n"
        "content of /output: \n"
        "content of /param_files: file \n"
    )
    assert contents(out) == {
        "file.copy": "beam 1\n",
        "gijs_was_here": "hello!",
        "listing.txt": listing,
        "minimal.parameters.json": given,
    }
    assert "content of /param_files: file" in done.stdout


@pytest.mark.parametrize(
    ("image", "args", "expected"),
    [
        ("simms", [], ["'tel' (str) is required but not given"]),
        (
            "minimal",
            ["--int", "1"],
            ["'file' (file) is required but not given"],
        ),
        (
            "minimal",
            ["--file", "beam.txt"],
            ["'int' (int) is required but not given"],
        ),
        (
            "minimal",
            ["--file", "beam.txt", "--int", "1", "--string", "abcdefghijk"],
            ["'string'", "'abcdefghijk' is 11 characters long; the limit is 10"],
        ),
        (
            "minimal",
            ["--file", "no-such-file.txt", "--int", "1"],
            ["file parameter 'file': 'no-such-file.txt'", "does not exist"],
        ),
        (
            "wsclean",
            ["--weight", "robust"],
            ["'weight'", "'robust' is not one of the choices natural, mwa, uniform, briggs"],
        ),
        ("simms", ["--tel", "meerkat", "--synthesis-time", "long"], ["--synthesis-time", "'long'"]),
        ("simms", ["--tel", "meerkat", "--synthesis_time", "2"], ["--synthesis_time"]),
    ],
)
@pytest.mark.usefixtures("compat_images")
def test_bad_parameters_are_refused_naming_the_field(
    kliko: KlikoCli, tmp_path: Path, image: str, args: list[str], expected: list[str]
) -> None:
    (tmp_path / "beam.txt").write_text("beam\n")
    out = tmp_path / "out"

    done = kliko("run-image", f"kliko-compat/{image}", "--output", out, *args)

    assert done.returncode != 0
    assert "Traceback" not in done.stderr
    for part in expected:
        assert part in done.stderr
    assert not out.exists() or not any(out.iterdir()), "no container may have run"


@pytest.mark.usefixtures("compat_images")
def test_fitsdoublerjoined_multiplies_matching_files_in_work(
    kliko: KlikoCli, tmp_path: Path
) -> None:
    work = tmp_path / "work"
    work.mkdir()
    (work / "a.fits").write_text("SIMPLE = T\n1\n-2.5\n")
    (work / "b.fits").write_text("4\n")
    (work / "notes.txt").write_text("7\n")

    done = kliko("run-image", "kliko-compat/fitsdoublerjoined", "--work", work, "--factor", "3")

    assert done.returncode == 0, done.stderr
    assert contents(work) == {
        "a.fits": "SIMPLE = T\n3\n-7.5\n",
        "b.fits": "12\n",
        "notes.txt": "7\n",
        "fitsdoublerjoined.parameters.json": {"factor": 3.0, "pattern": "*.fits"},
    }
    assert "a factor of '3.0'" in done.stdout

    again = run_image(kliko, f"kliko-compat/fitsdoublerjoined --work {work} --pattern '*.txt'")
    assert again.returncode == 0, again.stderr
    assert contents(work)["notes.txt"] == "14\n", "the pattern picks the files, factor 2.0"
    assert contents(work)["b.fits"] == "12\n"


# -- run_chain, as Kliko's chaining ------------------------------------------------------------


SEED_CHAIN = [
    ("kliko-compat/simms", {"tel": "meerkat", "synthesis-time": 2.5}),
    ("kliko-compat/meqtree-pipeliner", {}),
    ("kliko-compat/wsclean", {"weight": "uniform"}),
]


@pytest.mark.usefixtures("compat_images")
def test_run_chain_of_the_seed_then_again_from_the_cache(
    tmp_path: Path, container_creations: Creations
) -> None:
    cache = tmp_path / "cache"

    result = kliko_async.run_chain(SEED_CHAIN, cache_dir=cache)

    assert list(result.steps) == ["simms", "meqtree-pipeliner", "wsclean"]
    assert [s.state for s in result.steps.values()] == ["done", "done", "done"]
    outputs = {name: step.output for name, step in result.steps.items()}
    expected = {
        "simms": simms_output(),
        "meqtree-pipeliner": meqtree_output(),
        "wsclean": wsclean_output("uniform"),
    }
    for name, folder in outputs.items():
        assert folder is not None
        assert contents(folder) == expected[name], name

    since = time.time()
    again = kliko_async.run_chain(SEED_CHAIN, cache_dir=cache)
    until = time.time() + 0.5

    assert [s.state for s in again.steps.values()] == ["cached", "cached", "cached"]
    assert {name: step.output for name, step in again.steps.items()} == outputs
    for name, folder in outputs.items():
        assert folder is not None
        assert contents(folder) == expected[name], name
    # Only this process's (kliko.yml probes carry the owner label too): others may use the
    # same engine meanwhile, and read these images' kliko.yml for a cache of their own.
    assert container_creations(since, until, owner_pid=os.getpid()) == [], (
        "a fully cached run_chain creates no container, not even to read a kliko.yml"
    )


@pytest.mark.usefixtures("compat_images")
def test_run_chain_into_join_io_works_on_a_copy(tmp_path: Path) -> None:
    """fitsdoublerjoined's /work starts as a copy of wsclean's output, which stays as it was."""
    chain = [*SEED_CHAIN, ("kliko-compat/fitsdoublerjoined", {"factor": 2.0})]

    result = kliko_async.run_chain(chain, cache_dir=tmp_path / "cache")

    wsclean, doubled = result.steps["wsclean"].output, result.steps["fitsdoublerjoined"].output
    assert wsclean is not None and doubled is not None
    assert contents(doubled) == {
        **wsclean_output("uniform"),
        "wsclean-image.fits": wsclean_image("uniform", pixels="2\n5\n-8\n"),
        "fitsdoublerjoined.parameters.json": {"factor": 2.0, "pattern": "*.fits"},
    }
    assert contents(wsclean) == wsclean_output("uniform"), "the cached upstream entry is unchanged"
    assert kliko_async.run_chain(chain, cache_dir=tmp_path / "cache").count("cached") == 4


@pytest.mark.parametrize("user", [None, "1000:1000"], ids=["invoking-user", "own-user"])
@pytest.mark.usefixtures("compat_images")
def test_copying_the_input_and_writing_into_the_copy_works_for_any_user(
    kliko: KlikoCli, tmp_path: Path, user: str | None
) -> None:
    """Kliko's meqtree-pipeliner and wsclean copy /input to /output with shutil.copytree, which
    keeps modes, and write into the copy: a read-only entry (0555) made that fail for anyone but
    root (Kliko 0.8 ran as root). Entries are writable by their owner; the input stays
    read-only to the container (a read-only mount) and unchanged."""
    own = f", user: '{user}'" if user else ""
    chain = tmp_path / "chain.yaml"
    chain.write_text(
        "steps:\n"
        "  - {image: kliko-compat/simms, params: {tel: meerkat, synthesis-time: 2.5}}\n"
        f"  - {{image: kliko-compat/meqtree-pipeliner{own}}}\n"
        f"  - {{image: kliko-compat/wsclean, params: {{weight: natural}}{own}}}\n"
    )
    cache, out = tmp_path / "cache", tmp_path / "out"

    done = kliko("run", chain, "--cache-dir", cache, "--out", out, "--plain")

    assert done.returncode == 0, done.stdout + done.stderr
    assert "Permission denied" not in done.stdout
    assert contents(out / "meqtree-pipeliner") == meqtree_output()
    assert contents(out / "wsclean") == wsclean_output("natural")
    assert contents(out / "simms") == simms_output()
    verified = kliko("cache", "verify", "--cache-dir", cache)
    assert verified.returncode == 0, verified.stdout + verified.stderr


# -- kliko-async run, and Luigi --------------------------------------------------------------

SEED_CHAIN_FILE = """\
steps:
  - image: kliko-compat/simms
    params: {tel: meerkat, synthesis-time: 2.5}
  - image: kliko-compat/meqtree-pipeliner
  - image: kliko-compat/wsclean
    params: {weight: natural}
  - image: kliko-compat/fitsdoublerjoined
    params: {pattern: "*.fits", factor: -1}
"""


@pytest.mark.usefixtures("compat_images")
def test_a_chain_file_of_the_examples_runs_and_exports_every_output(
    kliko: KlikoCli, tmp_path: Path
) -> None:
    chain = tmp_path / "chain.yaml"
    chain.write_text(SEED_CHAIN_FILE)
    out = tmp_path / "out"

    done = kliko("run", chain, "--cache-dir", tmp_path / "cache", "--out", out, "--plain")

    assert done.returncode == 0, done.stdout + done.stderr
    assert "4 ran, 0 cached, 0 failed" in done.stdout
    assert sorted(p.name for p in out.iterdir()) == [
        "fitsdoublerjoined", "meqtree-pipeliner", "simms", "wsclean"
    ]  # fmt: skip
    assert contents(out / "simms") == simms_output()
    assert contents(out / "meqtree-pipeliner") == meqtree_output()
    assert contents(out / "wsclean") == wsclean_output("natural")
    assert contents(out / "fitsdoublerjoined") == {
        **wsclean_output("natural"),
        "wsclean-image.fits": wsclean_image("natural", pixels="-1\n-2.5\n4\n"),
        "fitsdoublerjoined.parameters.json": {"factor": -1.0, "pattern": "*.fits"},
    }


def test_kliko_task_runs_the_examples_as_kliko_08_luigi_did(
    tmp_path: Path, compat_images: dict[str, str]
) -> None:
    """Kliko's examples/luigi/simms.py shape (image_name, requires) over the seed's chain."""
    with warnings.catch_warnings():  # luigi warns about its own range-task autoloading
        warnings.simplefilter("ignore", DeprecationWarning)
        import luigi

    from kliko_async.luigi import KlikoTask

    class SimmsTask(KlikoTask):
        cache_dir = tmp_path / "cache"

        @classmethod
        def image_name(cls) -> str:
            return compat_images["simms"]

    class MeqtreeTask(SimmsTask):
        @classmethod
        def image_name(cls) -> str:
            return compat_images["meqtree-pipeliner"]

        def requires(self) -> SimmsTask:
            return SimmsTask(tel="meerkat", **{"synthesis-time": 2.5})

    class WscleanTask(SimmsTask):
        @classmethod
        def image_name(cls) -> str:
            return compat_images["wsclean"]

        def requires(self) -> MeqtreeTask:
            return MeqtreeTask()

    final = WscleanTask(weight="briggs")

    assert luigi.build([final], local_scheduler=True, detailed_summary=False) is True
    assert contents(Path(final.output().path)) == wsclean_output("briggs")
    simms = SimmsTask(tel="meerkat", **{"synthesis-time": 2.5})
    assert contents(Path(simms.output().path)) == simms_output()


# -- the command /kliko, whatever the image's CMD; its ENTRYPOINT kept -------------------------


def image_config(ref: str) -> dict[str, Any]:
    done = subprocess.run(
        ["docker", "image", "inspect", "--format", "{{json .Config}}", ref],
        capture_output=True,
        text=True,
        check=True,
    )
    config: dict[str, Any] = json.loads(done.stdout)
    return config


@pytest.mark.usefixtures("compat_images")
def test_an_image_without_cmd_runs_kliko_not_its_base_shell(
    kliko: KlikoCli, tmp_path: Path
) -> None:
    """Without the command /kliko these images would run busybox's sh, exit 0, write nothing."""
    config = image_config("kliko-compat/wsclean")
    assert config["Cmd"] == ["/bin/sh"], "the premise: the CMD is the base image's shell"
    assert not config.get("Entrypoint")
    out = tmp_path / "out"

    done = kliko("run-image", "kliko-compat/wsclean", "--output", out)
    result = kliko_async.run_chain(
        [("kliko-compat/wsclean", {"weight": "mwa"})], cache_dir=tmp_path / "cache"
    )

    assert done.returncode == 0, done.stderr
    assert contents(out) == {
        "wsclean.parameters.json": {"weight": "uniform"},
        "wsclean-image.fits": "WEIGHT = uniform\n1\n2.5\n-4\n",
    }
    output = result.steps["wsclean"].output
    assert output is not None
    assert contents(output)["wsclean.parameters.json"] == {"weight": "mwa"}


@pytest.mark.usefixtures("compat_images")
def test_an_images_entrypoint_runs_the_command_kliko(kliko: KlikoCli, tmp_path: Path) -> None:
    """As Kliko 0.8's create_container(command='/kliko'): ENTRYPOINT kept, /kliko its argument."""
    config = image_config(ENTRYPOINT_IMAGE)
    # Setting ENTRYPOINT clears the inherited CMD: run as it is, the wrapper would exec nothing.
    assert config["Entrypoint"] == ["/entrypoint.sh"] and not config.get("Cmd")
    out = tmp_path / "out"

    done = run_image(kliko, f"{ENTRYPOINT_IMAGE} --output {out} --tel meerkat --synthesis-time 2.5")
    result = kliko_async.run_chain(
        [(ENTRYPOINT_IMAGE, {"tel": "meerkat", "synthesis-time": 2.5})],
        cache_dir=tmp_path / "cache",
    )

    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("entrypoint: exec /kliko\nsimms: calling simms"), done.stdout
    assert contents(out) == {**simms_output(), "entrypoint-ran": "/kliko\n"}
    output = result.steps["simms-entrypoint"].output
    assert output is not None
    assert contents(output) == {**simms_output(), "entrypoint-ran": "/kliko\n"}
