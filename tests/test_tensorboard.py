"""TensorBoard, started on a log folder the way a user starts it, shows what training, eval and
analysis wrote there: every run under the name its folder gives it, the curves per epoch, the
reconstructions, HPARAMS telling the runs apart, the projector embedding; and a headless Chromium
renders them, the loss curves on the first screen.

Endpoints and page routes were checked against tensorboard 2.21.0.
"""

from __future__ import annotations

import base64
import json
import math
import os
import shutil
import socket
import struct
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from html.parser import HTMLParser
from pathlib import Path

import pytest

from conftest import QUIET, make_tiny_dataset, missing, run_cli

TENSORBOARD = Path(sys.executable).parent / "tensorboard"
N_TEST = 40
EPOCHS = 2
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
WINDOW = (1400, 1000)
# Chromium's virtual time does not advance while the page's requests are in flight, so the budget
# counts page time, not the server's: ~1.5 s was the least that showed the runs here, 20 s is margin
# that costs nothing (a call takes ~5 s of wall time whatever the budget).
VIRTUAL_TIME_MS = 20_000
# both tests read one board (two runs trained, one analysed and evaluated, a server): one worker
pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("tensorboard")]


@dataclass
class Board:
    url: str
    logs: Path
    runs: set[str]  # TensorBoard's run names, as the folders holding event files give them
    training_runs: set[str]
    analysed: str


def event_runs(logs: Path) -> set[str]:
    """The run names TensorBoard derives from a log folder: each folder holding event files,
    relative to the root."""
    return {path.parent.relative_to(logs).as_posix() for path in logs.rglob("events.out.tfevents.*")}


def succeeded(result: subprocess.CompletedProcess) -> None:
    assert result.returncode == 0, result.stderr[-3000:]


def get(url: str, path: str, timeout: float = 10) -> bytes:
    with urllib.request.urlopen(url + path, timeout=timeout) as response:
        return response.read()


def get_json(url: str, path: str, timeout: float = 10):
    return json.loads(get(url, path, timeout))


def query(**params: str) -> str:
    return "?" + urllib.parse.urlencode(params)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def poll(fetch: Callable[[], object], ready: Callable[[object], bool], timeout: float = 30):
    """TensorBoard reads event files in the background after it starts serving: the answer once
    ``ready`` holds, or the last one when time runs out (for the assertion to show)."""
    deadline = time.monotonic() + timeout
    while True:
        answer = fetch()
        if ready(answer) or time.monotonic() > deadline:
            return answer
        time.sleep(0.2)


@pytest.fixture(scope="module")
def board(tmp_path_factory) -> Iterator[Board]:
    root = tmp_path_factory.mktemp("tensorboard")
    data = make_tiny_dataset(root / "data", n_test=N_TEST)
    logs = root / "logs"
    runs_dir = logs / "train" / "runs"
    common = (f"paths.log_dir={logs}", f"data.data_dir={data}", f"trainer.max_epochs={EPOCHS}", QUIET)

    succeeded(run_cli("train.py", *common))
    (first,) = runs_dir.iterdir()
    # a second run that differs in one hyperparameter, as in a sweep over the latent size
    succeeded(run_cli("train.py", *common, "model.latent_dim=2"))
    last = f"ckpt_path={first / 'checkpoints' / 'last.ckpt'}"
    succeeded(run_cli("analyze.py", f"paths.log_dir={logs}", last, "map=pca", "umap_gmm=false"))
    succeeded(run_cli("eval.py", f"paths.log_dir={logs}", last))

    runs = event_runs(logs)
    training_runs = {run for run in runs if (logs / run).is_relative_to(runs_dir)}
    (analysed,) = (run for run in runs if (logs / run).is_relative_to(first))

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    output = root / "tensorboard.out"
    with output.open("w") as sink:
        server = subprocess.Popen(
            [str(TENSORBOARD), "--logdir", str(logs), "--host", "127.0.0.1", "--port", str(port)],
            stdout=sink,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + 60
        while True:
            if server.poll() is not None:
                pytest.fail(f"tensorboard exited with {server.returncode}:\n{output.read_text()[-3000:]}")
            try:
                listed = get_json(url, "/data/runs", timeout=2)
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                listed = None
            # serving comes before reading: the board is ready once it has found every run
            if listed is not None and runs <= set(listed):
                break
            if time.monotonic() > deadline:
                log = output.read_text()[-3000:]
                pytest.fail(f"tensorboard listed {listed} after 60 s, not {sorted(runs)}:\n{log}")
            time.sleep(0.2)
        yield Board(url=url, logs=logs, runs=runs, training_runs=training_runs, analysed=analysed)
    finally:
        server.terminate()
        try:
            server.wait(timeout=10)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


def test_tensorboards_data_api_serves_every_run_its_curves_images_and_the_projector_embedding(board):
    assert len(board.training_runs) == 2 and board.analysed in board.training_runs
    assert sorted(get_json(board.url, "/data/runs")) == sorted(board.runs)

    wanted = {"train/mse", "val/mse", "val/mse_best"}
    scalar_tags = poll(
        lambda: get_json(board.url, "/data/plugin/scalars/tags"),
        lambda tags: all(wanted <= set(tags.get(run, ())) for run in board.training_runs),
    )
    image_tags = poll(
        lambda: get_json(board.url, "/data/plugin/images/tags"),
        lambda tags: all("val/reconstructions" in tags.get(run, ()) for run in board.training_runs),
    )
    for run in board.training_runs:
        assert wanted <= set(scalar_tags[run]), run
        # each point: [wall_time, step, value]
        points = get_json(board.url, "/data/plugin/scalars/scalars" + query(run=run, tag="val/mse"))
        assert [step for _, step, _ in points] == list(range(1, EPOCHS + 1)), (run, points)  # x: epochs
        assert all(math.isfinite(value) for _, _, value in points), points
        assert "val/reconstructions" in image_tags[run], run
        shown = get_json(board.url, "/data/plugin/images/images" + query(run=run, tag="val/reconstructions"))
        assert len(shown) == EPOCHS, (run, shown)

    # HPARAMS (a POST): the setting the two runs differ in is marked as differing, so it is shown
    request = urllib.request.Request(
        board.url + "/data/plugin/hparams/experiment",
        data=json.dumps({"experimentName": ""}).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        experiment = json.load(response)
    differs = {info["name"]: info.get("differs", False) for info in experiment["hparamInfos"]}
    assert differs["latent_size"] and differs["params"] and not differs["dataset"], differs
    assert "val/mse_best" in {info["name"]["tag"] for info in experiment["metricInfos"]}

    # eval's and analysis's figures, grouped under views/ (after the loss curves)
    assert {"views/map_pca", "views/interpolation", "views/test_reconstructions"} <= set(image_tags[board.analysed])

    assert get_json(board.url, "/data/plugin/projector/runs") == [board.analysed]
    (embedding,) = get_json(board.url, "/data/plugin/projector/info" + query(run=board.analysed))["embeddings"]
    assert embedding["tensorName"] == "test latents, mlp d=3 (MNIST)"
    n_points, latent_size = embedding["tensorShape"]
    assert n_points == N_TEST and latent_size >= 1
    # what the projector page then loads: the vectors (float32), a label per point, the sprite
    name = query(run=board.analysed, name=embedding["tensorName"])
    vectors = get(board.url, "/data/plugin/projector/tensor" + name)
    assert len(vectors) == 4 * N_TEST * latent_size
    assert all(math.isfinite(x) for (x,) in struct.iter_unpack("<f", vectors))
    labels = get(board.url, "/data/plugin/projector/metadata" + name).decode().splitlines()
    assert len(labels) == N_TEST
    assert get(board.url, "/data/plugin/projector/sprite_image" + name).startswith(PNG_SIGNATURE)


class Page(HTMLParser):
    """What a dumped page shows: the text of each Time Series card, keyed by card. A card's tag
    is the title of its heading (its text is split at the '/')."""

    def __init__(self, dom: str):
        super().__init__()
        self.texts: list[str] = []
        self.cards: list[dict] = []
        self._card: dict | None = None
        self._hidden = 0
        self.feed(dom)

    def handle_starttag(self, tag, attrs):
        if tag in ("style", "script"):
            self._hidden += 1
        elif tag == "card-view-component":
            self._card = {"tag": None, "texts": []}
            self.cards.append(self._card)
        elif tag == "tb-truncated-path" and self._card is not None and self._card["tag"] is None:
            self._card["tag"] = dict(attrs).get("title")

    def handle_endtag(self, tag):
        if tag in ("style", "script"):
            self._hidden -= 1
        elif tag == "card-view-component":
            self._card = None

    def handle_data(self, data):
        text = data.strip()
        if text and not self._hidden:
            self.texts.append(text)
            if self._card is not None:
                self._card["texts"].append(text)

    def card(self, tag: str, run: str | None = None) -> list[str]:
        for card in self.cards:
            if card["tag"] == tag and (run is None or any(run in text for text in card["texts"])):
                return card["texts"]
        raise AssertionError(f"no card {tag!r} {run or ''} on the page; cards: {[c['tag'] for c in self.cards]}")


def open_in_chromium(chromium: str, url: str, screenshot: Path, profile: Path) -> Page:
    result = subprocess.run(
        [
            chromium,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            f"--user-data-dir={profile}",
            f"--window-size={WINDOW[0]},{WINDOW[1]}",
            f"--virtual-time-budget={VIRTUAL_TIME_MS}",
            f"--screenshot={screenshot}",
            "--dump-dom",
            url,
        ],
        capture_output=True,
        text=True,
        # a too small budget was seen to leave Chromium hanging, never exiting
        timeout=90,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert screenshot.read_bytes().startswith(PNG_SIGNATURE)
    assert struct.unpack(">II", screenshot.read_bytes()[16:24]) == WINDOW
    return Page(result.stdout)


def time_series(board: Board, pinned: list[dict]) -> str:
    """The Time Series dashboard (what TensorBoard opens on) with these cards pinned on top, as
    its share links do: groups below the first two start collapsed, so train/ and val/ would show
    no cards, and its tag filter in the URL is applied on only some loads."""
    return board.url + "/" + query(pinnedCards=json.dumps(pinned, separators=(",", ":"))) + "#timeseries"


def test_headless_chromium_renders_the_runs_curves_and_reconstructions(board, tmp_path):
    chromium = shutil.which("chromium")
    if chromium is None:
        missing("the TensorBoard browser test needs Chromium: install Debian's chromium (apt-get install chromium)")

    # what a user sees first (Time Series, its first two tag groups open): the loss curves, with
    # eval's and analysis's figures in a group after them
    first = open_in_chromium(chromium, board.url + "/#timeseries", tmp_path / "first.png", tmp_path / "first-profile")
    shown = {card["tag"] for card in first.cards}
    assert {"train/mse", "val/mse", "val/mse_best", "val/reconstructions"} <= shown, shown
    assert not [tag for tag in shown if tag and tag.startswith("views/")], shown

    curves = open_in_chromium(
        chromium,
        time_series(board, [{"plugin": "scalars", "tag": tag} for tag in ("train/mse", "val/mse")]),
        tmp_path / "scalars.png",
        tmp_path / "scalars-profile",
    )
    for run in board.training_runs:
        assert run in curves.texts, f"{run} not in the runs table"
        last = get_json(board.url, "/data/plugin/scalars/scalars" + query(run=run, tag="val/mse"))[-1][2]
        # the card's data table has a row per run: name, smoothed, value (4 digits), step, relative time
        texts = curves.card("val/mse", run)
        row = texts[texts.index(run) :][:5]
        assert {f"{last:.4g}", f"{last:.4f}".rstrip("0")} & set(row[1:3]), (run, last, row)
        curves.card("train/mse", run)

    # an image card shows one run: pin one per run (the runId is the experiment's id, then the run)
    pinned = [
        {"plugin": "images", "tag": "val/reconstructions", "runId": f"defaultExperimentId/{run}", "sample": 0}
        for run in sorted(board.training_runs)
    ]
    images = open_in_chromium(
        chromium, time_series(board, pinned), tmp_path / "images.png", tmp_path / "images-profile"
    )
    for run in board.training_runs:
        last = get_json(board.url, "/data/plugin/images/images" + query(run=run, tag="val/reconstructions"))[-1]
        # the card opens on the newest image
        texts = images.card("val/reconstructions", run)
        assert f"Step {last['step']}" in texts, texts


def screen_counts(screenshot: Path) -> dict[str, int]:
    """Pixels of a 1400x1000 screenshot of a dashboard with its runs list on the left: ``ticked``,
    coloured pixels in the column of run checkboxes (a ticked box is filled, an empty one an
    outline); ``coloured`` and ``dark``, in the panel right of the list (curves in run colours,
    images on black)."""
    from PIL import Image

    pixels = Image.open(screenshot).convert("RGB").load()

    def count(box: tuple[int, int, int, int], holds: Callable[[tuple[int, int, int]], bool]) -> int:
        x0, y0, x1, y1 = box
        return sum(holds(pixels[x, y]) for x in range(x0, x1) for y in range(y0, y1))

    coloured = lambda p: max(p) - min(p) > 80  # noqa: E731
    return {
        "ticked": count((25, 470, 60, 1000), coloured),
        "coloured": count((360, 70, 1390, 1000), coloured),
        "dark": count((360, 70, 1390, 1000), lambda p: sum(p) / 3 < 60),
    }


def test_make_tensorboard_opens_custom_scalars_and_images_with_the_newest_sweeps_fifty_runs(board, tmp_path):
    """Past 40 runs TensorBoard ticks none in CUSTOM SCALARS and IMAGES: ``python -m aelab.board``
    (``make tensorboard``) prints links that tick the newest experiment's, here a sweep of 50."""
    chromium = shutil.which("chromium")
    if chromium is None:
        missing("the TensorBoard browser test needs Chromium: install Debian's chromium (apt-get install chromium)")
    # an afternoon's log folder: an older sweep, then one of 50 jobs; each job the events of the
    # board's first training run (TensorBoard reads event files: training 50 runs adds nothing here)
    trained = board.logs / sorted(board.training_runs)[0]
    logs = tmp_path / "logs"
    older = logs / "multiruns" / "2026-12-05_09-00-00" / "model.latent_dim=3" / trained.name
    shutil.copytree(trained, older)
    for events in older.iterdir():
        os.utime(events, (time.time() - 86400, time.time() - 86400))
    sweep = "multiruns/2026-12-06_10-00-00"
    jobs = [f"{sweep}/model.latent_dim={d}/{trained.name}" for d in range(1, 51)]
    for job in jobs:
        shutil.copytree(trained, logs / job)

    # on a port another TensorBoard holds (the board fixture's), one line and the fix; followed below
    taken = urllib.parse.urlsplit(board.url).port
    command = [sys.executable, "-m", "aelab.board", "--logdir", str(logs), "--host", "127.0.0.1"]
    refused = subprocess.run([*command, "--port", str(taken)], capture_output=True, text=True, timeout=120)
    assert refused.returncode == 1
    expected = f"aelab: port {board.url} is taken (by a server of {board.logs}); choose another: --port 6007"
    assert refused.stderr.splitlines()[-1] == expected, refused.stderr[-2000:]

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    with (tmp_path / "board.err").open("w") as errors:
        process = subprocess.Popen(
            [sys.executable, "-m", "aelab.board", "--logdir", str(logs), "--host", "127.0.0.1", "--port", str(port)],
            stdout=subprocess.PIPE,
            stderr=errors,
            text=True,
        )
    try:
        printed = [process.stdout.readline().rstrip("\n") for _ in range(4)]  # it prints once serving
        assert printed[:2] == [
            f"TensorBoard: {url}/ (51 runs in {logs})",
            f"the newest experiment, {sweep} (50 runs), ticked in:",
        ], (printed, (tmp_path / "board.err").read_text()[-2000:])
        links = dict(line.strip().split(": ", 1) for line in printed[2:])
        assert set(links) == {"CUSTOM SCALARS", "IMAGES"}
        for link in links.values():
            state = urllib.parse.unquote(link.split("&runSelectionState=")[1])
            assert json.loads(base64.b64decode(state)) == dict.fromkeys(jobs, True)
        # the page lists what the server has read: wait until it has every run
        poll(lambda: get_json(url, "/data/runs"), lambda listed: len(listed) == 51)

        # TIME SERIES, the first page, lists every run whole: the sweep, the job and the data
        first = open_in_chromium(chromium, f"{url}/#timeseries", tmp_path / "first.png", tmp_path / "first-profile")
        assert trained.name == "MNIST" and set(jobs) <= set(first.texts), sorted(set(jobs) - set(first.texts))[:3]

        # ticked boxes, curves in the run colours, the reconstruction images: counts measured with
        # no run ticked (ticked 1274, coloured 408, images' dark 88) and with the 50 (2918, 1486, 58188)
        scalars = tmp_path / "custom_scalars.png"
        open_in_chromium(chromium, links["CUSTOM SCALARS"], scalars, tmp_path / "scalars-profile")
        counts = screen_counts(scalars)
        assert counts["ticked"] > 2000 and counts["coloured"] > 1000, counts
        images = tmp_path / "images.png"
        open_in_chromium(chromium, links["IMAGES"], images, tmp_path / "images-profile")
        counts = screen_counts(images)
        assert counts["ticked"] > 2000 and counts["dark"] > 20000, counts

        # stopped as a scheduler stops it (SIGTERM), the board stops its TensorBoard with it
        process.terminate()
        assert process.wait(timeout=30) == 128 + 15
        with pytest.raises(urllib.error.URLError):
            get(url, "/data/runs", timeout=2)
    finally:
        process.terminate()
        process.wait(timeout=30)


def test_the_board_on_an_empty_log_folder_says_so_and_tensorboard_shows_a_run_once_written(board, tmp_path):
    """``make tensorboard`` before the first run: one line says there is nothing yet and that
    TensorBoard shows runs as they are written, which it then does."""
    logs = tmp_path / "logs" / "train"
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    with (tmp_path / "board.err").open("w") as errors:
        process = subprocess.Popen(
            [sys.executable, "-m", "aelab.board", "--logdir", str(logs), "--host", "127.0.0.1", "--port", str(port)]
            + ["--reload_interval", "1"],  # TensorBoard's own option, passed through
            stdout=subprocess.PIPE,
            stderr=errors,
            text=True,
        )
    try:
        printed = [process.stdout.readline().rstrip("\n") for _ in range(2)]
        assert printed == [
            f"TensorBoard: {url}/ (0 runs in {logs})",
            "no runs yet: TensorBoard shows them as they are written; start this again for the links",
        ], (printed, (tmp_path / "board.err").read_text()[-2000:])
        # the promise: a run written now appears without a restart
        (run,) = sorted(board.training_runs)[:1]
        shutil.copytree(board.logs / run, logs / "runs" / "first" / "tensorboard")
        listed = poll(lambda: get_json(url, "/data/runs"), lambda runs: runs == ["runs/first/tensorboard"])
        assert listed == ["runs/first/tensorboard"]
    finally:
        process.terminate()
        process.wait(timeout=30)
