"""README.md and docs/*.md as a user reads them on a fresh clone: the links between the pages
resolve, ``--help`` and docs/commands.md list the tasks alike, and every command and snippet runs as
printed (read from the pages, so an edit there is tested here).

Commands that train run on the tiny mechanism, the pages' promise: ``../shared/data/<name>`` (and
``AELAB_DATA_DIR``) is a tiny generated dataset, ``/path/to/images`` and ``/path/to/images.npz``
are a few generated images, the logs go to the test's own folder, training is one epoch (a resume:
one more than its checkpoint holds), a search two trials. What this machine lacks (a GPU, SLURM) is
composed instead (``--cfg job``: every group, option and key exists), and the few commands that are
not run at all are in ``NOT_RUN`` with the reason: a new kind of command fails until it is added."""

from __future__ import annotations

import functools
import json
import os
import re
import shlex
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
import yaml

from aelab.data import DATASETS

from conftest import CONFIGS, QUIET, REPO, logger_extras, make_tiny_dataset, module_missing, run_cli
from pages import FENCE, Block, blocks, pages

# (a command, after its NAME=value assignments; why it is not run)
NOT_RUN = [
    (r"make\b", "set-up: CI runs make test itself"),
    (r"source\b", "set-up of the shell"),
    (r"python3 -m venv\b", "set-up"),
    (r"(\.venv/bin/)?pip3? (install|uninstall)\b", "network"),
    (r"(\.venv/bin/)?pre-commit install\b", "set-up: git hooks"),
    (r"git clone\b", "network"),
    (r"(\.venv/bin/)?python -m pytest\b", "this suite"),
    (r"(\.venv/bin/)?python scripts/mutations\.py\b", "runs the suite once per mutation (minutes)"),
    (r"(\.venv/bin/)?tensorboard\b", "a server: tests/test_tensorboard.py starts TensorBoard"),
    (r"(\.venv/bin/)?mlflow ui\b", "a server"),
    (r"(torchrun|srun|sbatch)\b", "a GPU cluster"),
    (r"#SBATCH\b", "a GPU cluster"),
    (r"(\.venv/bin/)?wandb (sync|login)\b", "network"),
]
TASKS = ("train", "eval", "analyze", "audit", "encode", "decode", "export")
TASK_COMMAND = re.compile(
    rf"^(?:(?:\.venv/bin/)?python3? src/({'|'.join(TASKS)})\.py|(?:\.venv/bin/)?aelab-({'|'.join(TASKS)}))$"
)
SCRIPT_COMMAND = re.compile(r"^(?:\.venv/bin/)?python3? (scripts/\w+\.py)$")
COMPLETION = re.compile(r'^eval "\$\((.+ -sc install=bash)\)"$')
ASSIGNMENT = re.compile(r"^([A-Za-z_][A-Za-z0-9_]*)=(.*)$", re.S)
SHARED_DATA = re.compile(r"(?:\.\./)+shared/data/[\w.-]+")
PLACEHOLDER = re.compile(r"<([A-Za-z][^<>]*)>")
# <run> and <sweep> with the path around them: the run or sweep meant is the newest that has it
FOLDER = re.compile(r"([\w./-]*)<(run|conv run|sweep|time)>([^\s'\"]*)")
# Hydra's flags that take a value
FLAG_VALUES = {"--cfg", "-c", "--package", "-p", "--config-path", "-cp", "--config-name", "-cn", "--config-dir", "-cd"}
INFO_VALUES = {"all", "config", "defaults", "defaults-tree", "plugins", "searchpath"}


def relative(page: Path) -> str:
    return page.relative_to(REPO).as_posix()


# --- reading a page -------------------------------------------------------------------------------


def prose(text: str, code: bool = False) -> Iterator[tuple[int, str]]:
    """The lines outside fenced blocks, with inline code blanked out unless ``code``."""
    fenced = False
    for number, line in enumerate(text.splitlines(), 1):
        if FENCE.match(line):
            fenced = not fenced
        elif not fenced:
            yield number, line if code else re.sub(r"(`+)(.+?)\1", lambda span: " " * len(span[0]), line)


def strip_comment(line: str) -> str:
    """``line`` without a ``# comment``: a ``#`` that starts a word outside quotes, as in bash."""
    quote, escaped = None, False
    for i, char in enumerate(line):
        if escaped:
            escaped = False
        elif char == "\\" and quote != "'":
            escaped = True
        elif quote:
            quote = None if char == quote else quote
        elif char in "'\"":
            quote = char
        elif char == "#" and (i == 0 or line[i - 1].isspace()):
            return line[:i].rstrip()
    return line.rstrip()


@dataclass
class Item:
    """A command line of a ```bash block, or a ```python block."""

    line: int
    kind: str  # "bash" or "python"
    text: str


def items(page: Path) -> list[Item]:
    found = []
    for block in blocks(page.read_text()):
        if block.language == "python":
            found.append(Item(block.line, "python", block.text))
        elif block.language == "bash":
            found += command_lines(block)
    return found


def command_lines(block: Block) -> list[Item]:
    """A bash block's commands: lines ending in a backslash joined, comments left out (a comment
    that a NOT_RUN rule names, such as #SBATCH, is kept)."""
    found, joined, first = [], "", None
    for number, line in enumerate(block.lines, block.line):
        first = number if first is None else first
        if line.rstrip().endswith("\\"):
            joined += line.rstrip()[:-1] + " "
            continue
        text = (joined + line).strip()
        text = strip_comment(text) or (text if not_run_reason(text) else "")
        if text:
            found.append(Item(first, "bash", text))
        joined, first = "", None
    return found


@dataclass
class Command:
    env: dict[str, str]
    words: list[str]  # without the assignments
    program: str

    @property
    def args(self) -> list[str]:
        return self.words[len(self.program.split()) :]


def parse(text: str) -> Command:
    words = shlex.split(text)
    env = {}
    while words and ASSIGNMENT.match(words[0]):
        name, value = ASSIGNMENT.match(words.pop(0)).groups()
        env[name] = value
    python = words and re.fullmatch(r"(\.venv/bin/)?python3?", words[0])
    return Command(env, words, " ".join(words[:2] if python else words[:1]))


def not_run_reason(text: str) -> str | None:
    rest = text
    while assignment := re.match(r"[A-Za-z_][A-Za-z0-9_]*=\S*\s+", rest):
        rest = rest[assignment.end() :]
    return next((reason for rule, reason in NOT_RUN if re.match(rule, rest)), None)


def is_simple(text: str) -> bool:
    """One command, no pipe, list, redirection or subshell."""
    lexer = shlex.shlex(PLACEHOLDER.sub("x", text), posix=True, punctuation_chars=True)
    lexer.whitespace_split = True
    return not any(set(token) <= set("();<>|&") for token in lexer)


def task_of(command: Command) -> str | None:
    match = TASK_COMMAND.match(command.program)
    return match and (match[1] or match[2])


def is_sweep(args: list[str]) -> bool:
    return "-m" in args or "--multirun" in args


def needs(page: Path) -> set[str]:
    """What the page's commands read before the page makes it: a run, a conv run, a sweep."""
    wanted, made = set(), set()
    for item in items(page):
        if item.kind != "bash" or not_run_reason(item.text):
            continue
        command = parse(item.text) if is_simple(item.text) else None
        if command and task_of(command) == "train" and not composed_only(command.args):
            args = command.args
            if is_sweep(args):
                made.add("sweep")
            elif not any(arg.startswith(("debug=", "+debug=", "ckpt_path=", "--")) for arg in args):
                made |= {"run", "conv run"} if "model=conv" in args else {"run"}
        reads = {"sweep" if name in ("sweep", "time") else name for _, name, _ in FOLDER.findall(item.text)}
        reads |= {"run"} if re.search(r"ckpt_path=last\b", item.text) else set()
        wanted |= reads - made
    return wanted


# --- the tiny mechanism ---------------------------------------------------------------------------


@dataclass
class Place:
    """A test's folder: ``repo`` stands in for the repository root (the commands' working
    directory), with the logs in ``repo/logs``; beside it the tiny data and images."""

    root: Path
    repo: Path = field(init=False)
    data: Path = field(init=False)
    images: Path = field(init=False)
    arrays: Path = field(init=False)

    def __post_init__(self) -> None:
        self.repo, self.data = self.root / "repo", self.root / "data"
        self.images, self.arrays = self.root / "images", self.root / "images.npz"

    @property
    def logs(self) -> Path:
        return self.repo / "logs"


def make_place(root: Path) -> Place:
    """Tiny MNIST, Fashion-MNIST and KMNIST in one folder (128 test images: audit's queries=[0,7,42],
    audit_benchmark.py's 100 added); 12 PNGs of 40x36 in two class folders; an .npz of 20 grey
    30x30 images with labels."""
    from PIL import Image

    place = Place(root)
    place.repo.mkdir(parents=True)
    for dataset in DATASETS:
        make_tiny_dataset(place.data, dataset, n_test=128)
    rng = np.random.default_rng(0)
    for label, name in enumerate(("cats", "dogs")):
        (place.images / name).mkdir(parents=True)
        for i in range(6):
            image = rng.integers(0, 60, size=(40, 36, 3), dtype=np.uint8)
            image[10:30, 8 + 10 * label : 18 + 10 * label] = 230
            Image.fromarray(image).save(place.images / name / f"{i}.png")
    images = rng.integers(0, 255, size=(20, 30, 30), dtype=np.uint8)
    np.savez(place.arrays, images=images, labels=np.arange(20, dtype=np.int64) % 2)
    return place


def exclude_keys() -> list[str]:
    """configs/hydra/default.yaml's keys left out of a job's folder name, and the mechanism's own."""
    listed = yaml.safe_load((CONFIGS / "hydra" / "default.yaml").read_text())["job"]["config"]["override_dirname"]
    added = ["trainer.max_epochs", "callbacks.progress_bar.refresh_rate"]
    return [*listed["exclude_keys"], *(key for key in added if key not in listed["exclude_keys"])]


def newest(folder: Path, prefix: str, suffix: str, place: Place, conv: bool = False) -> Path | None:
    """The newest run or sweep in ``folder`` whose ``prefix/<it>/suffix`` exists (else the newest):
    the one the page means, where it made several. Their names start with their start time."""
    candidates = sorted((p for p in folder.glob("*") if p.is_dir()), key=lambda p: p.name, reverse=True)
    if conv:
        candidates = [p for p in candidates if backbone(p) == "conv"]
    for candidate in candidates:
        if (place.repo / f"{prefix}{candidate.name}{suffix}").exists():
            return candidate
    return candidates[0] if candidates else None


def backbone(run: Path) -> str | None:
    summary = run / "run_summary.json"
    return json.loads(summary.read_text()).get("backbone") if summary.is_file() else None


class Unknown(Exception):
    pass


def fill(value: str, place: Place) -> str:
    """A command line with the tiny mechanism's data, images and runs put in."""
    for name in PLACEHOLDER.findall(value):
        if name not in ("run", "conv run", "sweep", "time"):
            raise Unknown(f"a placeholder the test does not know: <{name}>")

    def folder(match: re.Match) -> str:
        prefix, name, suffix = match.groups()
        where = place.logs / "train" / ("runs" if name.endswith("run") else "multiruns")
        found = newest(where, prefix, suffix, place, conv=name == "conv run")
        if found is None:
            raise Unknown(f"no <{name}> in {where}")
        return f"{prefix}{found.name}{suffix}"

    value = FOLDER.sub(folder, value)
    value = SHARED_DATA.sub(str(place.data), value)
    value = value.replace("/path/to/images.npz", str(place.arrays))
    return re.sub(r"/path/to/images(?![\w.])", str(place.images), value)


def composed_only(args: list[str]) -> str | None:
    """Why the command is composed rather than run: it asks for what this machine lacks (a CUDA GPU,
    or more of them, or more nodes; SLURM)."""
    gpu = {"trainer=gpu", "trainer=ddp", "trainer.accelerator=gpu", "trainer.accelerator=cuda"}
    devices = [int(arg.partition("=")[2]) for arg in args if re.fullmatch(r"trainer\.devices=\d+", arg)]
    nodes = [int(arg.partition("=")[2]) for arg in args if re.fullmatch(r"trainer\.num_nodes=\d+", arg)]
    if any(arg in gpu for arg in args) and max(devices, default=1) > cuda_devices():
        return "needs a CUDA GPU"
    if max(nodes, default=1) > 1 or "hydra/launcher=submitit_slurm" in args:
        return "needs a cluster"
    return None


@functools.cache
def cuda_devices() -> int:
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def flags_and_overrides(args: list[str]) -> tuple[list[str], list[str]]:
    """Hydra's flags (``-m``, ``--cfg job``, ``--help``) apart from the overrides: its parser reads
    the overrides as one list, so the test's own go after the page's and the flags before both."""
    flags, overrides = [], []
    for arg in args:
        takes_value = flags and (flags[-1] in FLAG_VALUES or (flags[-1] == "--info" and arg in INFO_VALUES))
        (flags if arg.startswith("-") or takes_value else overrides).append(arg)
    return flags, overrides


def first_of_each_sweep(overrides: list[str]) -> list[str]:
    """A sweep's overrides as its first job's: ``--cfg`` composes one job (Hydra refuses ``--cfg``
    with ``-m``, and a sweep's ``a,b`` without it: "Ambiguous value")."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parsed = OverridesParser.create().parse_overrides(overrides)
    return [
        f"{override.get_key_element()}={next(override.sweep_string_iterator())}"
        if override.is_sweep_override()
        else text
        for text, override in zip(overrides, parsed, strict=True)
    ]


def epochs_to_resume(args: list[str], place: Place) -> int:
    """One epoch more than the checkpoint a resume (``ckpt_path=``) starts from holds."""
    from aelab.errors import CheckpointError
    from aelab.runs import epochs_done, load_checkpoint, resolve_ckpt_path

    (value,) = [arg.partition("=")[2].strip("'\"") for arg in args if arg.startswith("ckpt_path=")]
    try:
        path = resolve_ckpt_path("last", place.logs / "train") if value == "last" else place.repo / value
    except CheckpointError:  # none: the command itself says so
        return 1
    return (epochs_done(load_checkpoint(path)) or 0) + 1 if path.is_file() else 1


def tiny_args(task: str, args: list[str], place: Place) -> list[str]:
    args = list(args)
    if any(arg.startswith("hparams_search=") for arg in args):
        args = [arg for arg in args if not arg.startswith("hydra.sweeper.n_trials=")] + ["hydra.sweeper.n_trials=2"]
    args.append(f"paths.log_dir={place.logs}")
    if task == "train":
        args.append(QUIET)
        if not any(arg.startswith("trainer.max_epochs=") for arg in args):
            resume = any(arg.startswith("ckpt_path=") for arg in args)
            args.append(f"trainer.max_epochs={epochs_to_resume(args, place) if resume else 1}")
    args.append(f"hydra.job.config.override_dirname.exclude_keys=[{','.join(exclude_keys())}]")
    return args


def extras_missing(task: str, args: list[str]) -> list[str]:
    """The optional extras the command needs and this environment lacks (in CI, none: it has all)."""
    needed = {"export"} if task == "export" else set()
    needed |= {extra for arg in args if arg.startswith("logger=") for extra in logger_extras(arg.partition("=")[2])}
    if os.environ.get("CI"):
        return []
    return sorted(extra for extra in needed if module_missing(extra))


# --- running a page -------------------------------------------------------------------------------


@dataclass
class Step:
    line: int
    text: str  # as printed
    how: str  # ran, composed, set, or "not run: <why>"
    argv: list[str] = field(default_factory=list)  # what ran
    error: str = ""  # why the page fails


def prepare(page: Path, place: Place) -> None:
    """What the page reads before it makes it: a tiny default run (a conv one for <conv run>), a
    tiny sweep ``-m model.latent_dim=2,10``."""
    wanted = needs(page)
    for name, args in (
        ("run", []),
        ("conv run", ["model=conv"]),
        ("sweep", ["-m", "model.latent_dim=2,10"]),
    ):
        if name in wanted:
            result = run_cli(
                "train.py", *tiny_args("train", args, place), env={"AELAB_DATA_DIR": str(place.data)}, cwd=place.repo
            )
            assert result.returncode == 0, f"preparing a {name} for {page.name}:\n{result.stderr[-3000:]}"


def run_page(page: Path, place: Place) -> Iterator[Step]:
    """Each command and Python block of ``page``, in order, as a ``Step`` once done."""
    env: dict[str, str] = {}  # what the page's export lines set
    for item in items(page):
        yield run_item(page, item, place, env)


def run_item(page: Path, item: Item, place: Place, page_env: dict[str, str]) -> Step:
    """A Python block through ``python -c``, a command line through ``run_command``."""
    step = Step(item.line, item.text, "ran")
    if item.kind == "python":
        first = item.text.lstrip().splitlines()[0]
        if page.name == "README.md":
            step.how = "not run: tests/test_readme.py runs the README's"
        elif re.match(r"#\s*src/", first):
            step.how = "not run: a file's content (tests/test_extension.py writes and trains with it)"
        elif re.search(r"aelab\.load\(\s*[\"']last[\"']", item.text):
            # it reads the repository's own logs/, not the test's: tests/test_readme.py covers it
            step.how = "not run: aelab.load('last') reads the repository's logs/"
        else:
            step.argv = ["-c", item.text]
            result = run_cli("-c", item.text, cwd=place.repo, env={"AELAB_DATA_DIR": str(place.data)})
            step.error = failure(result)
        return step
    reason = not_run_reason(item.text)
    if reason:
        step.how = f"not run: {reason}"
        return step
    try:
        return run_command(page, item, place, page_env, step)
    except Unknown as unknown:
        step.error = str(unknown)
        return step


def run_command(page: Path, item: Item, place: Place, page_env: dict[str, str], step: Step) -> Step:
    """Completion set-up through bash; ``export``; a task or a script of scripts/ through the
    zygote, on the tiny mechanism; anything else fails: a rule for it is missing."""
    completion = COMPLETION.match(item.text)
    if completion:
        path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
        step.argv = ["bash", "-c", item.text]
        result = subprocess.run(step.argv, cwd=REPO, env={**os.environ, "PATH": path}, capture_output=True, text=True)
        step.error = failure(result)
        return step
    # filled in before the words are split: <conv run> is one
    command = parse(fill(item.text, place)) if is_simple(item.text) else None
    if command and command.program == "export" and all(ASSIGNMENT.match(word) for word in command.args):
        page_env.update(ASSIGNMENT.match(word).groups() for word in command.args)
        step.how = "set"
        return step
    task = command and task_of(command)
    script = command and SCRIPT_COMMAND.match(command.program)
    if not (task or script):
        step.error = f"unknown command in {relative(page)}: {item.text}: add a rule"
        return step
    env = {**page_env, **command.env, "AELAB_DATA_DIR": str(place.data)}
    args = command.args
    if script:
        if "--device cuda" in " ".join(args) and not cuda_devices():
            step.how = "not run: needs a CUDA GPU"
            return step
        if script[1] == "scripts/benchmark.py" and "--epochs" not in args:
            args += ["--epochs", "1"]
        step.argv = [script[1], *args]
    else:
        missing = extras_missing(task, args)
        if missing:
            step.how = f"not run: needs the {', '.join(missing)} extra"
            return step
        flags, overrides = flags_and_overrides(args)
        why = composed_only(overrides)
        if why:
            step.how = f"composed ({why})"
            flags = [flag for flag in flags if flag not in ("-m", "--multirun")]
            flags += [] if "--cfg" in flags else ["--cfg", "job"]
            overrides = first_of_each_sweep(overrides)
        program = f"aelab-{task}" if "aelab-" in command.program else f"{task}.py"
        step.argv = [program, *flags, *tiny_args(task, overrides, place)]
    result = run_cli(*step.argv, env=env, cwd=place.repo)
    step.error = failure(result)
    return step


def failure(result: subprocess.CompletedProcess) -> str:
    return "" if result.returncode == 0 else f"exit code {result.returncode}:\n{result.stderr[-3000:]}"


# --- the tests ------------------------------------------------------------------------------------


def slug(heading: str) -> str:
    """GitHub's anchor of a heading: its text lowercased, without punctuation, spaces as hyphens."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)
    return re.sub(r"[^\w\- ]", "", text.strip().lower()).replace(" ", "-")


def anchors(page: Path) -> set[str]:
    found, seen = set(), {}
    for _, line in prose(page.read_text(), code=True):
        heading = re.match(r"^#{1,6}\s+(.*?)(?:\s+#+)?\s*$", line)
        if heading:
            base = slug(heading[1])
            found.add(f"{base}-{seen[base]}" if base in seen else base)
            seen[base] = seen.get(base, 0) + 1
    return found


LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)|^\s*\[[^\]]+\]:\s*(\S+)")


def broken_links(page: Path) -> list[str]:
    broken = []
    text = page.read_text()
    for number, line in prose(text):
        for match in LINK.finditer(line):
            target = match[1] or match[2]
            if re.match(r"(https?|mailto):", target):
                continue
            path, _, anchor = target.partition("#")
            file = (page.parent / path).resolve() if path else page
            if not file.is_relative_to(REPO) or not file.exists():
                broken.append(f"{relative(page)}:{number}: {target}")
            elif anchor and file.suffix == ".md" and anchor not in anchors(file):
                broken.append(f"{relative(page)}:{number}: {target}")
    return broken


def test_every_link_between_the_pages_resolves():
    """A link to a file or a heading that a rewrite moved or renamed: GitHub shows it, and it goes nowhere."""
    broken = [link for page in pages() for link in broken_links(page)]
    assert not broken, "broken links:\n" + "\n".join(broken)


def test_every_code_block_names_its_language():
    """The command runner reads ```bash blocks only: a command in a bare ``` block would go untested."""
    bare = [
        f"{relative(page)}:{block.line - 1}"
        for page in pages()
        for block in blocks(page.read_text())
        if not block.language
    ]
    assert bare == []


def test_the_pages_stay_a_reference_a_newcomer_reads():
    """The README is the five-minute read (issue: at most 200 lines); the rest is in docs/, and
    every page of docs/ is linked from it."""
    readme = (REPO / "README.md").read_text()
    assert len(readme.splitlines()) <= 200
    assert [page.name for page in pages()[1:] if f"](docs/{page.name})" not in readme] == []


def test_help_and_the_commands_page_describe_each_task_alike():
    """--help (configs/hydra/default.yaml) and docs/commands.md say in the same words what each task does."""
    header = yaml.safe_load((CONFIGS / "hydra" / "default.yaml").read_text())["help"]["header"]
    tasks = header.split("Tasks", 1)[1].split("\n\n", 1)[0]
    lines = [line.strip() for line in tasks.splitlines() if line.startswith("  python src/")]
    assert len(lines) == len(TASKS)
    page = REPO / "docs" / "commands.md"
    listed = {line.strip() for block in blocks(page.read_text()) if block.language == "text" for line in block.lines}
    assert [line for line in lines if line not in listed] == []


@pytest.fixture
def place(page, tmp_path) -> Place:
    """The test's stand-in for the repository, with what the page reads before it makes it."""
    place = make_place(tmp_path)
    prepare(page, place)
    return place


# make test-docs, which CI runs after make test: the pages' hundred or so commands take about four
# minutes on two workers, and make test's budget has no room for them
@pytest.mark.slow
@pytest.mark.docs
@pytest.mark.parametrize("page", pages(), ids=lambda page: page.name)
def test_the_pages_commands_run_as_printed(page, place):
    """In page order: a page trains before it measures ``ckpt_path=last``."""
    for step in run_page(page, place):
        assert not step.error, f"{relative(page)}:{step.line}: {step.text}\nran: {shlex.join(step.argv)}\n{step.error}"
