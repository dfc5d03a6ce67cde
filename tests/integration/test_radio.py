"""The radio example (examples/radio/) on a real engine, checked for its science.

The chain simulates an observation with python-casacore, flags it with AOFlagger, images it
three ways with WSClean and renders PNGs. These tests read the restored FITS images with
nothing but the standard library, so they check the tools, not our reading of them: every
source must be where the simulation put it, at its flux.
"""

from __future__ import annotations

import json
import os
import re
import struct
import subprocess
import sys
from array import array
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
import yaml

from kliko_async.cache.hashing import hash_tree, sha256_file
from kliko_async.cache.provenance import EXPORT_MARKER
from kliko_async.cache.store import Cache

if TYPE_CHECKING:
    from conftest import KlikoCli

pytestmark = pytest.mark.docker

ROOT = Path(__file__).resolve().parents[2]
RADIO = ROOT / "examples" / "radio"
KLIKO_ASYNC = str(Path(sys.executable).parent / "kliko-async")
CHAIN = RADIO / "chain.yaml"
IMAGE_STEPS = {"natural": "natural", "uniform": "uniform", "briggs": "Briggs'(0)"}
"""The expansions of the chain's matrix step ``image``, and WSClean's WSCWEIGH header of each."""
STEPS = ["simulate", "flag", *IMAGE_STEPS, "render"]
RUN_TIMEOUT = 600


@pytest.fixture(scope="session")
def radio_images(docker_engine: None) -> None:
    """Build the Debian base image (once: skipped when up to date) and the four radio images."""
    done = subprocess.run(
        [str(RADIO / "build")], capture_output=True, text=True, timeout=1500, check=False
    )
    assert done.returncode == 0, f"examples/radio/build failed:\n{done.stderr}"


@dataclass(frozen=True)
class FitsImage:
    """The first two axes of a FITS file's primary image, and its header cards."""

    header: dict[str, Any]
    width: int
    height: int
    pixels: array[float]

    def at(self, x: int, y: int) -> float:
        return self.pixels[y * self.width + x]

    def brightest(
        self, exclude: tuple[tuple[float, float], ...] = (), radius: int = 0
    ) -> tuple[float, int, int]:
        """Value, x and y (0-based) of the brightest pixel, away from the ``exclude`` centres."""
        best = (float("-inf"), -1, -1)
        for y in range(self.height):
            row = y * self.width
            for x in range(self.width):
                value = self.pixels[row + x]
                if value > best[0] and all(
                    abs(x - cx) > radius or abs(y - cy) > radius for cx, cy in exclude
                ):
                    best = (value, x, y)
        return best

    def peak_near(self, x: float, y: float, within: int) -> tuple[float, int, int]:
        """Value, x and y of the brightest pixel within ``within`` pixels of (x, y)."""
        return max(
            (self.at(i, j), i, j)
            for j in range(round(y) - within, round(y) + within + 1)
            for i in range(round(x) - within, round(x) + within + 1)
        )


def read_fits(path: Path) -> FitsImage:
    """A FITS file's primary header and 32-bit float image (what WSClean writes)."""
    raw = path.read_bytes()
    header: dict[str, Any] = {}
    offset = 0
    while True:
        card = raw[offset : offset + 80].decode("ascii")
        offset += 80
        if card.startswith("END "):
            break
        if card[8:10] == "= ":
            value = card[10:].split("/")[0].strip() if "'" not in card[10:] else card[10:]
            header[card[:8].strip()] = _fits_value(value)
    offset = -(-offset // 2880) * 2880  # the data start at the next 2880-byte block
    assert header["BITPIX"] == -32, f"{path}: expected 32-bit floats, got BITPIX {header['BITPIX']}"
    width, height = header["NAXIS1"], header["NAXIS2"]
    pixels = array("f", raw[offset : offset + 4 * width * height])
    if struct.pack("=f", 1.0) != struct.pack(">f", 1.0):
        pixels.byteswap()  # FITS is big-endian
    return FitsImage(header, width, height, array("d", pixels))


def _fits_value(text: str) -> Any:
    text = text.strip()
    if text.startswith("'"):  # a string, in which '' stands for one quote
        return re.match(r"'((?:[^']|'')*)'", text).group(1).replace("''", "'").rstrip()  # type: ignore[union-attr]
    if text in ("T", "F"):
        return text == "T"
    try:
        return int(text)
    except ValueError:
        return float(text)


def events(stdout: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stdout.splitlines() if line.startswith("{")]


def step_states(found: list[dict[str, Any]]) -> dict[str, str]:
    """Which steps ran (a container started) and which came from the cache."""
    kinds = {"step_started": "ran", "step_cached": "cached"}
    return {e["step"]: kinds[e["kind"]] for e in found if e["kind"] in kinds}


def chain_copy(folder: Path, step: str, **params: object) -> Path:
    """examples/radio/chain.yaml with some parameters of one step changed.

    ``briggs`` is the ``include`` combination of the matrix step ``image``.
    """
    data = yaml.safe_load(CHAIN.read_text())
    if step == "briggs":
        (briggs,) = data["steps"]["image"]["matrix"]["include"]
        briggs.update(params)
    else:
        data["steps"][step]["params"].update(params)
    path = folder / "chain.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def png_size(path: Path) -> tuple[int, int]:
    raw = path.read_bytes()
    assert raw[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG"
    width, height = struct.unpack(">II", raw[16:24])
    return width, height


@pytest.fixture(scope="module")
def radio_run(
    radio_images: None, tmp_path_factory: pytest.TempPathFactory
) -> tuple[Path, Path, list[dict[str, Any]]]:
    """The whole chain run once through examples/radio/run: (cache, out, its JSON events)."""
    folder = tmp_path_factory.mktemp("radio")
    cache, out = folder / "cache", folder / "out"
    done = subprocess.run(
        [str(RADIO / "run"), "--cache-dir", str(cache), "--out", str(out), "--json"],
        cwd=folder,
        # The kliko-async of the Python running the tests (an unprivileged user's may differ).
        env=dict(os.environ, XDG_CACHE_HOME=str(folder / "xdg-cache"), KLIKO_ASYNC=KLIKO_ASYNC),
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT,
    )
    assert done.returncode == 0, done.stdout[-5000:] + done.stderr[-5000:]
    return cache, out, events(done.stdout)


def test_the_whole_chain_runs_every_step(
    radio_run: tuple[Path, Path, list[dict[str, Any]]],
) -> None:
    _, out, found = radio_run
    assert step_states(found) == dict.fromkeys(STEPS, "ran")
    finished = [e for e in found if e["kind"] == "run_finished"]
    assert finished and finished[0]["ok"] and finished[0]["ran"] == len(STEPS)
    assert (out / "simulate" / "sim.ms" / "table.dat").is_file(), "a real Measurement Set"
    for step in IMAGE_STEPS:
        assert (out / step / "wsclean-image.fits").is_file()


def test_the_three_image_steps_run_at_the_same_time(
    radio_run: tuple[Path, Path, list[dict[str, Any]]],
) -> None:
    _, _, found = radio_run
    started = {e["step"]: e["time"] for e in found if e["kind"] == "step_started"}
    finished = {e["step"]: e["time"] for e in found if e["kind"] == "step_finished"}
    # Each image step starts before any other one finishes (the machine has 2 CPUs or more).
    assert max(started[s] for s in IMAGE_STEPS) < min(finished[s] for s in IMAGE_STEPS)


def test_the_flagger_finds_the_simulated_interference(
    radio_run: tuple[Path, Path, list[dict[str, Any]]],
) -> None:
    _, _, found = radio_run
    lines = [e["text"] for e in found if e["kind"] == "log_line" and e["step"] == "flag"]
    after = [float(m.group(1)) for t in lines if (m := re.search(r"([\d.]+)% flagged after", t))]
    assert after, "\n".join(lines)
    # One of 16 channels and one of 60 time steps hold interference: 7.7% of the data.
    assert 7.5 <= after[0] <= 15.0, f"flagged {after[0]}%"


def test_every_source_is_where_it_was_put_at_its_flux(
    radio_run: tuple[Path, Path, list[dict[str, Any]]],
) -> None:
    _, out, _ = radio_run
    simulate = yaml.safe_load(CHAIN.read_text())["steps"]["simulate"]["params"]
    sources = [tuple(map(float, text.split())) for text in simulate["sources"]]
    centre = next(flux for east, north, flux in sources if east == north == 0)
    assert centre == 1.0, "the chain puts a 1 Jy source at the phase centre"
    beams = {}
    for step, weighting in IMAGE_STEPS.items():
        image = read_fits(out / step / "wsclean-image.fits")
        h = image.header
        assert h["WSCWEIGH"] == weighting, f"{step}: WSClean weighted {h['WSCWEIGH']}"
        assert (h["CRVAL1"] % 360, h["CRVAL2"]) == pytest.approx((0.0, -30.0), abs=1e-6)
        x0, y0 = h["CRPIX1"] - 1, h["CRPIX2"] - 1  # the phase centre, 0-based

        flux, x, y = image.brightest()
        assert abs(x - x0) <= 2 and abs(y - y0) <= 2, f"{step}: brightest pixel at {x},{y}"
        assert flux == pytest.approx(1.0, rel=0.1), f"{step}: brightest pixel {flux} Jy/beam"

        expected: list[tuple[float, float]] = []
        for east, north, want in sources:
            # SIN projection: pixel offsets are the direction cosines over the pixel size.
            ex, ey = x0 + east / 3600 / h["CDELT1"], y0 + north / 3600 / h["CDELT2"]
            got, x, y = image.peak_near(ex, ey, within=2)
            assert got == pytest.approx(want, rel=0.1), (
                f"{step}: {got:.3f} Jy/beam near ({ex:.0f}, {ey:.0f}) where {want} Jy was put"
            )
            expected.append((ex, ey))
        elsewhere, x, y = image.brightest(exclude=tuple(expected), radius=12)
        weakest = min(flux for _, _, flux in sources)
        assert elsewhere < 0.1 * weakest, f"{step}: {elsewhere:.3f} Jy/beam at {x},{y}, no source"
        beams[step] = h["BMAJ"]
    # Natural weighting has the widest beam, uniform the narrowest; Briggs 0 is in between.
    assert beams["natural"] > beams["briggs"] > beams["uniform"], beams


def test_render_draws_every_image_and_a_contact_sheet(
    radio_run: tuple[Path, Path, list[dict[str, Any]]],
) -> None:
    _, out, found = radio_run
    for step in IMAGE_STEPS:
        width, height = png_size(out / "render" / f"{step}.png")
        assert width > 200 and height > 200
    width, height = png_size(out / "render" / "contact-sheet.png")
    assert width > 2.5 * height, "three pictures side by side"
    titles = [e["text"] for e in found if e["kind"] == "log_line" and e["step"] == "render"]
    assert any("Briggs robust 0.0 weighting" in t for t in titles), titles


def test_changing_robust_reruns_only_its_branch_and_render(
    radio_run: tuple[Path, Path, list[dict[str, Any]]], kliko: KlikoCli, tmp_path: Path
) -> None:
    cache, _, _ = radio_run
    out = tmp_path / "out"
    chain = chain_copy(tmp_path, "briggs", robust=0.5)

    done = kliko("run", chain, "--cache-dir", cache, "--out", out, "--json", timeout=RUN_TIMEOUT)

    assert done.returncode == 0, done.stdout[-5000:] + done.stderr[-5000:]
    expected = dict.fromkeys(STEPS, "cached") | {"briggs": "ran", "render": "ran"}
    assert step_states(events(done.stdout)) == expected
    assert read_fits(out / "briggs" / "wsclean-image.fits").header["WSCWEIGH"] == "Briggs'(0.5)"


def test_changing_the_simulation_would_rerun_everything(
    radio_run: tuple[Path, Path, list[dict[str, Any]]], kliko: KlikoCli, tmp_path: Path
) -> None:
    cache, _, _ = radio_run
    chain = chain_copy(tmp_path, "simulate", seed=2)

    done = kliko("run", chain, "--cache-dir", cache, "--dry-run")

    assert done.returncode == 0, done.stdout + done.stderr
    assert f"{len(STEPS)} to run, 0 cached" in done.stdout, done.stdout


def test_every_step_works_as_a_user_the_image_does_not_know(
    radio_run: tuple[Path, Path, list[dict[str, Any]]], kliko: KlikoCli, tmp_path: Path
) -> None:
    # A uid with no passwd entry and no home in the image: casacore, AOFlagger, WSClean and
    # matplotlib must still find somewhere to write (the /kliko scripts see to it).
    cache, _, _ = radio_run
    data = yaml.safe_load(CHAIN.read_text())
    for step in data["steps"].values():
        step["user"] = "4321:4321"
    chain = tmp_path / "chain.yaml"
    chain.write_text(yaml.safe_dump(data, sort_keys=False))
    out = tmp_path / "out"

    done = kliko(
        "run",
        chain,
        "--cache-dir",
        cache,
        "--out",
        out,
        "--no-cache",
        "--jobs",
        "3",
        "--json",
        timeout=RUN_TIMEOUT,
    )

    assert done.returncode == 0, done.stdout[-5000:] + done.stderr[-5000:]
    assert step_states(events(done.stdout)) == dict.fromkeys(STEPS, "ran")
    assert png_size(out / "render" / "contact-sheet.png")[0] > 0


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--sources", "1 2"], "simulate: source '1 2' is not three numbers 'east north flux'"),
        (["--sources", "0 0 1", "--sources", "1e6 0 1"], "more than 90 degrees from the phase"),
        (["--antennas", "1"], "simulate: need at least 2 antennas and 1 channel"),
        (["--integration", "0"], "simulate: integration must be more than 0, not 0.0"),
    ],
)
def test_a_bad_simulation_fails_saying_what_is_wrong(
    radio_images: None, kliko: KlikoCli, tmp_path: Path, flags: list[str], message: str
) -> None:
    done = kliko("run-image", "radio/simulate", *flags, "--output", tmp_path / "out")

    assert done.returncode != 0
    assert message in done.stdout + done.stderr
    assert "Traceback" not in done.stdout + done.stderr


def test_an_unknown_weighting_is_refused_before_anything_runs(
    radio_images: None, kliko: KlikoCli, tmp_path: Path
) -> None:
    chain = chain_copy(tmp_path, "briggs", weighting="briggz")

    done = kliko("run", chain, "--cache-dir", tmp_path / "cache", "--out", tmp_path / "out")

    assert done.returncode != 0
    assert "weighting" in done.stderr and "briggz" in done.stderr, done.stderr
    assert "Traceback" not in done.stderr
    assert not (tmp_path / "out").exists(), "nothing ran"


def test_render_of_a_single_image_step_names_the_picture_after_the_file(
    radio_run: tuple[Path, Path, list[dict[str, Any]]], kliko: KlikoCli, tmp_path: Path
) -> None:
    _, out, _ = radio_run
    pictures = tmp_path / "pictures"

    done = kliko("run-image", "radio/render", "--input", out / "uniform", "--output", pictures)

    assert done.returncode == 0, done.stdout + done.stderr
    assert sorted(p.name for p in pictures.iterdir()) == ["contact-sheet.png", "wsclean-image.png"]
    assert "render: wsclean-image.png (uniform weighting" in done.stdout


def test_the_run_writes_its_report_beside_its_outputs(
    radio_run: tuple[Path, Path, list[dict[str, Any]]],
) -> None:
    _, out, _ = radio_run
    page = (out / "report.html").read_text()
    assert 'data-step="image" data-state="ran"' in page  # the matrix step, its expansions folded
    for step in STEPS:
        assert f"id='step-{step}'" in page
    assert page.count('class="bar ran"') == len(STEPS)


def test_the_provenance_of_an_image_reruns_it_fully_cached(
    radio_run: tuple[Path, Path, list[dict[str, Any]]], kliko: KlikoCli, tmp_path: Path
) -> None:
    cache, out, _ = radio_run
    told = kliko("provenance", out / "briggs", "--cache-dir", cache)
    assert told.returncode == 0, told.stderr
    chain = tmp_path / "provenance.yaml"
    chain.write_text(told.stdout)
    assert list(yaml.safe_load(told.stdout)["steps"]) == ["simulate", "flag", "briggs"]

    again = kliko("run", chain, "--cache-dir", cache, "--out", tmp_path / "o", "--json")

    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert step_states(events(again.stdout)) == dict.fromkeys(
        ["simulate", "flag", "briggs"], "cached"
    )
    # The export is the very entry the product came from (another test may have made that key
    # again with --no-cache: WSClean's FITS history names its temporary folder, so compare with
    # the entry's manifest, not with the first export).
    marker = json.loads((out / "briggs" / EXPORT_MARKER).read_text())
    entry = Cache(cache).lookup(marker["key"])
    assert entry is not None
    image = "wsclean-image.fits"
    assert sha256_file(tmp_path / "o" / "briggs" / image) == entry.manifest.outputs[image]


def test_the_second_chain_flags_and_images_an_observation_on_disk(
    radio_run: tuple[Path, Path, list[dict[str, Any]]], kliko: KlikoCli, tmp_path: Path
) -> None:
    """examples/radio/from-ms.yaml on the Measurement Set the first chain simulated, exported:
    the data is read, never written; flagging finds the interference; the image is right."""
    _, out, _ = radio_run
    observation = out / "simulate"
    before = hash_tree(observation)
    done = kliko(
        "run", RADIO / "from-ms.yaml", "--set", f"observation={observation}",
        "--cache-dir", tmp_path / "cache", "--out", tmp_path / "out", "--json",
        timeout=RUN_TIMEOUT,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-5000:] + done.stderr[-5000:]
    found = events(done.stdout)
    assert step_states(found) == dict.fromkeys(["flag", "image", "render"], "ran")
    assert hash_tree(observation) == before, "the observation on disk is never written"
    lines = [e["text"] for e in found if e["kind"] == "log_line" and e["step"] == "flag"]
    after = [float(m.group(1)) for t in lines if (m := re.search(r"([\d.]+)% flagged after", t))]
    assert after and 7.5 <= after[0] <= 15.0, "\n".join(lines)
    image = read_fits(tmp_path / "out" / "image" / "wsclean-image.fits")
    assert image.header["WSCWEIGH"] == "Briggs'(0)"
    flux, x, y = image.brightest()
    x0, y0 = image.header["CRPIX1"] - 1, image.header["CRPIX2"] - 1
    assert abs(x - x0) <= 2 and abs(y - y0) <= 2 and flux == pytest.approx(1.0, rel=0.1)
    assert (tmp_path / "out" / "render" / "contact-sheet.png").is_file()

    again = kliko(
        "run", RADIO / "from-ms.yaml", "--set", f"observation={observation}",
        "--cache-dir", tmp_path / "cache", "--json",
    )  # fmt: skip
    assert step_states(events(again.stdout)) == dict.fromkeys(["flag", "image", "render"], "cached")
