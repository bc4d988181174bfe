"""Does the test suite catch deliberate bugs? Each mutation in ``MUTATIONS`` patches the package
with one small, realistic bug; the tests it names must fail once it is applied.

For every mutation a temporary copy of the project is made (src/, configs/, scripts/,
pyproject.toml, README.md and tests/), the patch is applied to the copy, and the named tests run
there with ``python -m pytest -x`` (the copy's ``src`` first on PYTHONPATH, so the mutated package is
the one imported, also by the commands the tests start). A mutation is *caught* when pytest reports
failed tests (exit code 1), *missed* when they pass. A control run of the same tests on the
unmutated copy must pass, without skips: a test that never ran proves nothing.

Use it to check that a change to the tests (e.g. making the suite faster) did not weaken them::

    .venv/bin/python scripts/mutations.py                        # tests/ of the working tree
    .venv/bin/python scripts/mutations.py --tests-rev <commit>   # tests/ as of a git revision
    .venv/bin/python scripts/mutations.py --only exit-code --only per-class-mse
    .venv/bin/python scripts/mutations.py --list

The package, configs and scripts always come from the working tree. Exit status: 0 when every
control passes and every mutation is caught, 1 otherwise, 2 when a mutation no longer applies (its
old text is not in the file exactly once) or the revision has no tests/.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ElementTree
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# what a copy of the project holds besides tests/
COPIED_DIRS = ("src", "configs", "scripts", "docs")
COPIED_FILES = ("pyproject.toml", "README.md")
# a hung test (a deadlocked DDP run) becomes an error instead of stopping the whole check
RUN_TIMEOUT_S = 1200


@dataclass(frozen=True)
class Mutation:
    name: str
    file: str  # relative to the repository
    old: str  # must occur exactly once in ``file``
    new: str
    bug: str  # the real bug it simulates
    tests: tuple[str, ...]  # pytest node ids (or file::test prefixes) that must fail
    keyword: str | None = None  # a -k expression narrowing ``tests``

    def mutated(self, text: str) -> str:
        """``text`` (the file's) with the patch applied; ``ValueError`` if it cannot be."""
        count = text.count(self.old)
        if count != 1:
            raise ValueError(f"{self.name}: the old text occurs {count} times in {self.file}, not once")
        mutated = text.replace(self.old, self.new)
        if self.file.endswith(".py"):
            # a syntax error would fail the tests too, and pass for a caught bug
            try:
                compile(mutated, self.file, "exec")
            except SyntaxError as err:
                raise ValueError(f"{self.name}: the patched {self.file} does not compile: {err}") from None
        return mutated

    def apply(self, root: Path) -> None:
        path = root / self.file
        path.write_text(self.mutated(path.read_text()))


MUTATIONS = [
    Mutation(
        name="error-wording",
        file="src/aelab/rules.py",
        old='return "a positive integer"',
        new='return "an integer above zero"',
        bug="a user error is reworded: the one-line message no longer says what the docs and tests promise",
        tests=("tests/test_config.py::test_a_bad_latent_dim_is_refused_when_the_model_is_built",),
    ),
    Mutation(
        name="exit-code",
        file="src/aelab/cli.py",
        old="EXIT_USER_ERROR = 2",
        new="EXIT_USER_ERROR = 1",
        bug="a user mistake exits 1, as a crash does, instead of 2",
        tests=("tests/test_loggers.py::test_the_entry_point_refuses_a_logger_without_its_extra_in_one_line",),
    ),
    Mutation(
        name="unpickle-checkpoint",
        file="src/aelab/runs.py",
        old="checkpoint = torch.load(path, map_location=map_location, weights_only=True)",
        new="checkpoint = torch.load(path, map_location=map_location, weights_only=False)",
        bug="checkpoints are unpickled in full: a malicious file runs its code when loaded",
        tests=("tests/test_errors.py::test_malicious_checkpoint_is_refused_and_its_payload_never_runs",),
    ),
    Mutation(
        name="registry-skips-lists",
        file="src/aelab/registry.py",
        old="    elif isinstance(spec, (list, tuple)):\n        for i, value in enumerate(spec):",
        new="    elif isinstance(spec, tuple):\n        for i, value in enumerate(spec):",
        bug="the registry check does not look inside lists: a _target_ in a stored list argument is not refused",
        tests=(
            "tests/test_errors.py::test_a_checkpoint_naming_a_non_project_target_is_refused_and_never_runs_it"
            "[nested in an encoder argument]",
        ),
    ),
    Mutation(
        name="per-class-mse",
        file="src/aelab/report/metrics.py",
        old="{classes[int(c)]: float(values[labels == c].mean()) for c in np.unique(labels)}",
        new="{classes[int(c)]: float(values[labels == c].sum() / len(values)) for c in np.unique(labels)}",
        bug="the per-class MSE divides a class's errors by the size of the whole test split",
        tests=("tests/test_analysis.py::test_per_class_mean_is_keyed_by_class_name",),
    ),
    Mutation(
        name="resume-skips-one-more",
        file="src/aelab/data/batches.py",
        old="bounds = bounds[self.skip_once :]",
        new="bounds = bounds[self.skip_once + 1 :] if self.skip_once else bounds",
        bug="a mid-epoch resume skips one batch more than the interrupted run had done",
        tests=(
            "tests/test_data.py::test_chunks_hold_the_same_batches_in_the_same_order_and_resume_counts_batches",
            "tests/test_distributed.py::test_a_resumed_epoch_skips_the_same_batches_in_every_shard",
        ),
    ),
    Mutation(
        name="resume-skips-an-epoch",
        file="src/aelab/fast/__init__.py",
        old='return {"epoch_batches_done": done if done < self._batches_per_epoch else 0}',
        new='return {"epoch_batches_done": done if done <= self._batches_per_epoch else 0}',
        bug="an end-of-epoch checkpoint records the epoch as done batches: the resume skips the next epoch",
        tests=("tests/test_train.py::test_resume_from_last_checkpoint_matches_an_uninterrupted_run",),
    ),
    Mutation(
        name="shuffle-ignores-epoch",
        file="src/aelab/data/batches.py",
        old="generator = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)",
        new="generator = torch.Generator().manual_seed(self.seed * 1_000_003)",
        bug="the training order depends on the seed only: every epoch sees the batches in the same order",
        tests=("tests/test_data.py::test_shuffle_depends_only_on_seed_and_epoch",),
    ),
    Mutation(
        name="seed-not-applied",
        file="src/aelab/tasks/train.py",
        old='if cfg.get("seed") is not None:\n        L.seed_everything(',
        new='if cfg.get("seed") is None:\n        L.seed_everything(',
        bug="the configured seed is never applied: two runs with one seed differ",
        tests=("tests/test_train.py::test_seeded_cpu_runs_are_reproducible",),
    ),
    Mutation(
        name="normalize-0-1",
        file="src/aelab/data/batches.py",
        old="return images.float().div_(255).sub_(0.5).div_(0.5)",
        new="return images.float().div_(255)",
        bug="images are scaled to [0, 1] instead of the [-1, 1] the tanh decoder and the article use",
        tests=("tests/test_data.py::test_normalize_maps_0_to_minus_1_and_255_to_plus_1",),
    ),
    Mutation(
        name="temporary-left-behind",
        file="src/aelab/files.py",
        old="            Path(tmp).unlink(missing_ok=True)",
        new="            pass",
        bug="a failed atomic write (a full disk) leaves its temporary file behind",
        tests=("tests/test_storage.py::test_an_atomic_write_that_fails_leaves_the_old_file_and_no_temporary",),
    ),
    Mutation(
        name="checkpoints-not-atomic",
        file="src/aelab/runs.py",
        old="            tmp.write_bytes(buffer.getbuffer())",
        new="            pass\n        Path(path).write_bytes(buffer.getbuffer())",
        bug="checkpoints are written by Lightning's own writer: a kill mid-write can leave a torn last.ckpt",
        tests=("tests/test_storage.py::test_checkpoints_are_written_through_the_atomic_writer",),
    ),
    Mutation(
        name="name-with-slash",
        file="src/aelab/paths.py",
        old='SAFE_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.=,+-]*")',
        new='SAFE_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.=,+/-]*")',
        bug="a task_name such as a/b or x/../../y is accepted and names a path out of the log root",
        tests=("tests/test_config.py::test_names_made_from_user_strings_stay_one_directory",),
    ),
    Mutation(
        name="sweep-subdir-slash",
        file="src/aelab/paths.py",
        old='return str(value).replace("/", "_").replace("\\\\", "_") or "_"',
        new='return str(value).replace("\\\\", "_") or "_"',
        bug="a sweep override such as +tag=a/../.. keeps its slashes and puts the job's folder outside the sweep",
        tests=("tests/test_config.py::test_names_made_from_user_strings_stay_one_directory",),
    ),
    Mutation(
        name="sweep-counts-failures",
        file="src/aelab/report/sweep.py",
        old='failed = [r for r in rows if r["status"] != "ok"]',
        new='failed = [r for r in rows if r["status"] == "error"]',
        bug="the sweep report looks for a status no summary holds: failed jobs go uncounted and the sweep exits 0",
        tests=("tests/test_sweep.py::test_a_failed_job_is_reported_the_rest_finish_and_the_sweep_exits_1",),
    ),
    Mutation(
        name="ddp-shards-overlap",
        file="src/aelab/data/batches.py",
        old="start, end = rank * n // world_size, (rank + 1) * n // world_size",
        new="start, end = rank * n // world_size, min(n, rank * n // world_size + math.ceil(n / world_size))",
        bug="DDP shards are all ceil(n / world_size) long: neighbouring processes train on the same images",
        tests=(
            "tests/test_distributed.py::test_every_image_is_seen_once_per_epoch_across_processes_in_equal_batch_counts"
            "[True-513-256-2]",
            "tests/test_distributed.py::test_a_shard_one_image_short_keeps_every_batch_non_empty",
        ),
    ),
    Mutation(
        name="knn-scores-training-set",
        file="src/aelab/report/metrics.py",
        old="(knn.predict(test_z[i : i + KNN_CHUNK]) == test_y[i : i + KNN_CHUNK])",
        new="(knn.predict(train_z[i : i + KNN_CHUNK]) == train_y[i : i + KNN_CHUNK])",
        bug="kNN accuracy is measured on the training latents it was fit on, not the test latents",
        tests=("tests/test_analysis.py::test_knn_is_at_chance_on_noise",),
    ),
    Mutation(
        name="audit-votes-for-itself",
        file="src/aelab/report/audit.py",
        old="distances, indices = self._search.kneighbors(n_neighbors=k)",
        new="distances, indices = self._search.kneighbors(self.codes, n_neighbors=k)",
        bug="every image is its own nearest neighbour, so its given label votes for itself",
        tests=(
            "tests/test_audit.py::test_an_image_is_never_its_own_neighbour_and_queries_find_exact_matches",
            "tests/test_audit.py::test_a_planted_wrong_label_ranks_first_with_every_method",
        ),
        keyword="knn or never",
    ),
    Mutation(
        name="cluster-acc-worst-match",
        file="src/aelab/report/metrics.py",
        old="rows, cols = linear_sum_assignment(-counts)",
        new="rows, cols = linear_sum_assignment(counts)",
        bug="clustering ACC maps clusters to labels by the worst one-to-one matching instead of the best",
        tests=(
            "tests/test_analysis.py::test_perfectly_separated_clusters_score_acc_nmi_ari_1",
            "tests/test_analysis.py::test_cluster_accuracy_of_a_known_confusion",
        ),
    ),
    Mutation(
        name="chunk-drops-a-batch",
        file="src/aelab/fast/chunks.py",
        old="chunk = bounds[i : i + self.steps + 1]",
        new="chunk = bounds[i : i + self.steps]",
        bug="each chunk of fast.steps_per_call batches loses its last batch: epochs train on fewer images",
        tests=("tests/test_data.py::test_chunks_hold_the_same_batches_in_the_same_order_and_resume_counts_batches",),
    ),
    # two that only a command line run in its own process shows (the suite runs those in the
    # zygote's children since the speed-up, cold interpreters before it)
    Mutation(
        name="last-takes-debug-runs",
        file="src/aelab/runs.py",
        old="if not is_debug_run(run_dir_of(p))),",
        new="if True or not is_debug_run(run_dir_of(p))),",
        bug="ckpt_path=last resumes or evaluates a debug= run (one batch) instead of refusing it",
        tests=("tests/test_train.py::test_ckpt_path_last_never_means_a_debug_run",),
    ),
    Mutation(
        name="sigterm-exits-0",
        file="src/aelab/cli.py",
        old="EXIT_TERMINATED = 128 + 15",
        new="EXIT_TERMINATED = 0",
        bug="a run stopped by SIGTERM exits 0, so a scheduler takes it for a finished job",
        tests=(
            "tests/test_errors.py::test_sigterm_mid_epoch_then_the_printed_command_ends_where_an_uninterrupted_run_does[1-3]",
        ),
    ),
]


# --- the project's copies ------------------------------------------------------------------------


def make_template(dest: Path, tests_rev: str | None) -> None:
    """The unmutated project in ``dest``: the working tree's package, with its tests or those of ``tests_rev``."""
    caches = shutil.ignore_patterns("__pycache__", "*.pyc", ".pytest_cache", ".hypothesis")
    for name in COPIED_DIRS:
        shutil.copytree(REPO / name, dest / name, ignore=caches)
    for name in COPIED_FILES:
        shutil.copy2(REPO / name, dest / name)
    if tests_rev is None:
        shutil.copytree(REPO / "tests", dest / "tests", ignore=caches)
        return
    archive = subprocess.run(["git", "archive", tests_rev, "tests"], cwd=REPO, capture_output=True)
    if archive.returncode != 0:
        raise ValueError(f"git archive {tests_rev} tests failed: {archive.stderr.decode().strip()}")
    subprocess.run(["tar", "-x", "-C", str(dest)], input=archive.stdout, check=True)


def pytest_env(root: Path) -> dict[str, str]:
    env = dict(os.environ)
    # the copy's package must win over the editable install of the repository, in every child too
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(root / "src"), env.get("PYTHONPATH")) if p)
    return env


@dataclass
class Run:
    code: int | None  # None: timed out
    output: str
    seconds: float


def run_pytest(root: Path, tests: tuple[str, ...], keyword: str | None, junit: Path | None = None) -> Run:
    """The tests in ``root``: with ``junit`` (a control) all of them, into that report; without it
    (a mutant) up to the first failure."""
    command = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q"]
    command += ["-n", "0"]  # a handful of tests: no pytest-xdist workers to start
    command += ["-x"] if junit is None else [f"--junitxml={junit}"]
    if keyword is not None:
        command += ["-k", keyword]
    started = time.perf_counter()
    try:
        done = subprocess.run(
            [*command, *tests],
            cwd=root,
            env=pytest_env(root),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            timeout=RUN_TIMEOUT_S,
        )
    except subprocess.TimeoutExpired as expired:
        output = expired.stdout.decode(errors="replace") if isinstance(expired.stdout, bytes) else expired.stdout
        return Run(None, output or "", time.perf_counter() - started)
    return Run(done.returncode, done.stdout, time.perf_counter() - started)


def in_fresh_copy(template: Path, work: Path, label: str) -> Path:
    root = work / label
    shutil.copytree(template, root)
    return root


# --- controls ------------------------------------------------------------------------------------


def junit_key(node_id: str) -> tuple[str, str]:
    """A node id as JUnit XML names its test case: (classname, name)."""
    path, *parts = node_id.split("::")
    classname = ".".join([path.removesuffix(".py").replace("/", "."), *parts[:-1]])
    return classname, parts[-1] if parts else ""


def junit_outcomes(junit: Path) -> list[tuple[str, str, str]]:
    """(classname, name, outcome) of every test case in a JUnit XML report."""
    try:
        tree = ElementTree.parse(junit)
    except (OSError, ElementTree.ParseError):
        return []
    outcomes = []
    for case in tree.iter("testcase"):
        tags = {child.tag for child in case}
        outcome = next((tag for tag in ("failure", "error", "skipped") if tag in tags), "passed")
        outcomes.append((case.get("classname", ""), case.get("name", ""), outcome))
    return outcomes


def control_verdict(tests: tuple[str, ...], run: Run, outcomes: list[tuple[str, str, str]]) -> str:
    """``pass`` when every named test ran and passed on the unmutated copy; else why not."""
    if run.code not in (0, 1):
        return "timeout" if run.code is None else f"error (exit {run.code})"
    for node_id in tests:
        classname, name = junit_key(node_id)
        seen = [o for c, n, o in outcomes if c == classname and (not name or n == name or n.startswith(f"{name}["))]
        if not seen:
            return "not run"
        for bad in ("failure", "error", "skipped"):
            if bad in seen:
                return {"failure": "failed", "error": "error", "skipped": "skipped"}[bad]
    return "pass"


def run_controls(mutations: list[Mutation], template: Path, work: Path) -> tuple[dict[str, str], list[tuple[str, Run]]]:
    """One control run for all node ids given without -k, one per keyword otherwise; without -x, so
    that every test's outcome is known. Returns each mutation's control verdict, and the failed runs."""
    groups: dict[str | None, list[Mutation]] = {}
    for mutation in mutations:
        groups.setdefault(mutation.keyword, []).append(mutation)
    verdicts: dict[str, str] = {}
    failed: list[tuple[str, Run]] = []
    for index, (keyword, members) in enumerate(groups.items()):
        tests = tuple(dict.fromkeys(t for m in members for t in m.tests))
        label = "control" if keyword is None else f"control -k {keyword}"
        junit = work / f"control-{index}.xml"
        root = in_fresh_copy(template, work, f"control-{index}")
        run = run_pytest(root, tests, keyword, junit)
        outcomes = junit_outcomes(junit)
        for mutation in members:
            verdicts[mutation.name] = control_verdict(mutation.tests, run, outcomes)
        passed = all(verdicts[m.name] == "pass" for m in members)
        print(f"{label}: {len(tests)} node ids, {'pass' if passed else 'FAIL'} ({run.seconds:.0f} s)", flush=True)
        if not passed:
            failed.append((label, run))
    return verdicts, failed


# --- the report ----------------------------------------------------------------------------------


def result_of(run: Run) -> str:
    if run.code is None:
        return "error (timeout)"
    return {1: "caught", 0: "missed"}.get(run.code, f"error (exit {run.code})")


def print_table(rows: list[tuple[str, str, str, str]]) -> None:
    header = ("mutation", "tests", "control", "result")
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    for row in [header, tuple("-" * w for w in widths), *rows]:
        print(" | ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip())


def tail(text: str, lines: int = 40) -> str:
    return "\n".join(text.rstrip().splitlines()[-lines:])


def list_mutations(mutations: list[Mutation]) -> None:
    for mutation in mutations:
        print(f"{mutation.name}  ({mutation.file})\n    bug:   {mutation.bug}")
        for test in mutation.tests:
            print(f"    fails: {test}" + (f" -k {mutation.keyword!r}" if mutation.keyword else ""))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tests-rev", metavar="REV", help="take tests/ from this git revision, not the working tree")
    parser.add_argument("--only", metavar="NAME", action="append", help="run this mutation only (repeatable)")
    parser.add_argument("--list", action="store_true", help="list the mutations and the tests that must catch them")
    args = parser.parse_args()

    names = [m.name for m in MUTATIONS]
    unknown = sorted(set(args.only or []) - set(names))
    if unknown:
        parser.error(f"no mutation named {', '.join(unknown)}; known: {', '.join(names)}")
    selected = [m for m in MUTATIONS if not args.only or m.name in args.only]
    if args.list:
        list_mutations(selected)
        return 0

    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="aelab-mutations-") as tmp:
        work = Path(tmp)
        template = work / "template"
        # a bad revision or a stale mutation (its old text edited away) stops the check before any test runs
        try:
            make_template(template, args.tests_rev)
            for mutation in selected:
                mutation.mutated((template / mutation.file).read_text())
        except ValueError as err:
            print(f"mutations.py: {err}", file=sys.stderr)
            return 2

        source = f"tests/ of {args.tests_rev}" if args.tests_rev else "tests/ of the working tree"
        print(f"{len(selected)} mutations, {source}, package of the working tree", flush=True)
        verdicts, problems = run_controls(selected, template, work)

        rows = []
        for mutation in selected:
            root = in_fresh_copy(template, work, mutation.name)
            mutation.apply(root)
            run = run_pytest(root, mutation.tests, mutation.keyword)
            shutil.rmtree(root, ignore_errors=True)
            result = result_of(run)
            print(f"{mutation.name}: {result} ({run.seconds:.0f} s)", flush=True)
            tests = " ".join(mutation.tests) + (f" -k {mutation.keyword!r}" if mutation.keyword else "")
            rows.append((mutation.name, tests, verdicts[mutation.name], result))
            if result != "caught":
                problems.append((f"mutation {mutation.name} ({mutation.bug})", run))

    print()
    print_table(rows)
    ok = all(row[2] == "pass" and row[3] == "caught" for row in rows)
    for label, run in problems:
        print(f"\n--- {label}: the end of pytest's output ---\n{tail(run.output)}")
    minutes, seconds = divmod(round(time.perf_counter() - started), 60)
    caught = sum(row[3] == "caught" for row in rows)
    print(f"\n{caught} of {len(rows)} mutations caught; wall time {minutes} min {seconds} s")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
