"""``make tensorboard`` (``python -m aelab.board``): TensorBoard on the log folder, and links to
its dashboards with the newest experiment's runs selected.

Why: TensorBoard's CUSTOM SCALARS and IMAGES dashboards select every run on their first load only
while there are at most 40 (its run selector's ``maxNamesToEnableByDefault``). After an afternoon
of sweeps there are more, and both dashboards open empty ("Matches (0)", no images) until runs
are ticked by hand. The selection is also read from the page's address, where the dashboard
itself writes it when a box is ticked (``#images&runSelectionState=<base64 of {"<run>": true}>``;
TensorBoard's frontend, ``tf_storage``, checked against tensorboard 2.21), so the links printed
here open those dashboards with the newest experiment's runs ticked, however many there are.
TIME SERIES, the page TensorBoard opens on, shows every run anyway.

An experiment is a sweep (``multiruns/<time>/``, every job of it) or, for single runs, the
``runs/`` folder; the newest is the one whose event files were written last when the board
starts (a sweep started later: start the board again for its links). Options this module does
not know are TensorBoard's own (``--bind_all``, ``--samples_per_plugin``).
"""

from __future__ import annotations

import argparse
import base64
import json
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Sequence
from pathlib import Path

# the dashboards whose run selector starts empty past 40 runs
SELECTING_DASHBOARDS = ("custom_scalars", "images")


def event_runs(logdir: Path) -> dict[str, float]:
    """Each run TensorBoard lists for ``logdir`` (a folder holding event files, named by its path
    relative to the root) and when its events were last written."""
    runs: dict[str, float] = {}
    for events in logdir.rglob("events.out.tfevents.*"):
        name = events.parent.relative_to(logdir).as_posix()
        runs[name] = max(runs.get(name, 0.0), events.stat().st_mtime)
    return runs


def experiment_of(run: str) -> str:
    """``multiruns/2026-12-06_10-00-00`` for a sweep's job (also under a task folder, e.g.
    ``train/multiruns/...``), the ``runs`` folder for a single run, else the run itself."""
    parts = run.split("/")
    for i, part in enumerate(parts):
        if part == "multiruns" and i + 1 < len(parts):
            return "/".join(parts[: i + 2])
        if part == "runs":
            return "/".join(parts[: i + 1])
    return run


def newest_experiment(runs: dict[str, float]) -> tuple[str, list[str]]:
    """The experiment written to last (the one of the run written to last), and its runs in TensorBoard's order."""
    newest = experiment_of(max(runs, key=runs.__getitem__))
    return newest, sorted(run for run in runs if experiment_of(run) == newest)


def selecting_link(url: str, dashboard: str, runs: Sequence[str]) -> str:
    """``url``'s ``dashboard`` with exactly ``runs`` ticked."""
    state = base64.b64encode(json.dumps(dict.fromkeys(runs, True), separators=(",", ":")).encode()).decode()
    return f"{url.rstrip('/')}/#{dashboard}&runSelectionState={urllib.parse.quote(state, safe='')}"


def wait_until_serving(url: str, logdir: Path, server: subprocess.Popen, timeout: float = 60) -> None:
    """Until the TensorBoard just started answers at ``url``: asked directly, past any proxy the
    environment names, and checked to be this one (another server on the port is refused)."""
    direct = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    deadline = time.monotonic() + timeout
    while True:
        if server.poll() is not None:
            raise SystemExit(f"aelab: tensorboard exited with {server.returncode} before serving {url}")
        try:
            with direct.open(f"{url}/data/environment", timeout=2) as response:
                serving = json.load(response).get("data_location")
        except (urllib.error.URLError, ConnectionError, TimeoutError, ValueError):
            serving = None
        if serving is not None:
            if server.poll() is not None or Path(serving).resolve() != logdir.resolve():
                raise SystemExit(f"aelab: port {url} is taken (by a server of {serving}); choose another: --port 6007")
            return
        if time.monotonic() > deadline:
            raise SystemExit(f"aelab: tensorboard did not answer at {url} within {timeout:.0f} s")
        time.sleep(0.2)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m aelab.board",
        description=__doc__.split("\n\n")[0],
        epilog="Any other option is TensorBoard's own (e.g. --samples_per_plugin images=100).",
    )
    parser.add_argument("--logdir", type=Path, default=Path("logs/train"), help="the log folder (default logs/train)")
    parser.add_argument("--host", default="localhost")
    parser.add_argument("--port", type=int, default=6006)
    args, tensorboard_options = parser.parse_known_args(argv)
    url = f"http://{args.host}:{args.port}"
    command = [sys.executable, "-m", "tensorboard.main", "--logdir", str(args.logdir), "--host", args.host]
    server = subprocess.Popen([*command, "--port", str(args.port), *tensorboard_options])
    # a SIGTERM (a job scheduler, a test) stops TensorBoard too, through the finally below
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    try:
        wait_until_serving(url, args.logdir, server)
        runs = event_runs(args.logdir) if args.logdir.is_dir() else {}
        print(f"TensorBoard: {url}/ ({len(runs)} runs in {args.logdir})", flush=True)
        if runs:
            experiment, selected = newest_experiment(runs)
            print(f"the newest experiment, {experiment} ({len(selected)} runs), ticked in:", flush=True)
            for dashboard in SELECTING_DASHBOARDS:
                link = selecting_link(url, dashboard, selected)
                print(f"  {dashboard.replace('_', ' ').upper()}: {link}", flush=True)
        else:
            print("no runs yet: TensorBoard shows them as they are written; start this again for the links", flush=True)
        return server.wait()
    except KeyboardInterrupt:
        return 0
    finally:
        if server.poll() is None:
            server.terminate()
            server.wait()


if __name__ == "__main__":
    sys.exit(main())
