"""Every command the README and the documentation pages show is run here (and every command run here is shown).

The pages are README.md and the Markdown pages of the documentation site (``docs/**/*.md``).
Commands are the lines of their ``bash`` code blocks, the ``$ ...`` lines of their plain
code blocks and the commands named in prose that :data:`INLINE` lists. Each is run as
written, in a scratch folder laid out like a clone (``/data/...`` paths point into it, and
``/path/to/`` weights are a random network saved there). The demo and the tutorial snippet
take minutes: they are marked slow; CI runs the test command itself. The README starts with
the two commands (``.ci/run`` runs its second bash block) and stays short: the rest is in
``docs/``, whose build ``tests/test_docs.py`` runs.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text(encoding="utf-8")
README_MAX_LINES = 250


def pages() -> dict:
    """README.md and every Markdown page of the documentation site, by path from the repository root."""
    out = {"README.md": README}
    for path in sorted((ROOT / "docs").rglob("*.md")):
        if "_build" not in path.parts:
            out[path.relative_to(ROOT).as_posix()] = path.read_text(encoding="utf-8")
    return out


# Commands the pages name in prose (inline code) rather than in code blocks.
INLINE = [
    "tensorboard --logdir runs/demo",
    "streamcl report runs/demo",
    "streamcl report runs/demo --format latex",
    "streamcl run experiments/synthetic/paper_toybox.yaml",
    "streamcl run experiments/demo.yaml -o runs=1",
    "python tests/fault/test_config_fuzz.py 7",
    "streamcl list",
    "streamcl run experiments/demo.yaml",
]

DEMO = ("python3 -m venv .venv && .venv/bin/pip install -q -c constraints.txt -e '.[cpu]' && "
        ".venv/bin/streamcl run experiments/demo.yaml")
TESTS = ("python3 -m venv .venv && .venv/bin/pip install -q -c constraints.txt -e '.[cpu,test,ray,slurm]' && "
         ".venv/bin/python -m pytest -q")
ERROR_EXAMPLE = "streamcl run experiments/demo.yaml -o strategy.train_mb_sise=8"


FENCE = re.compile(r"^ *```(\S*)[ \t]*$")


def code_blocks(text: str | None = None) -> list:
    """(language, text) of every fenced block of a page, or of every page (indented ones inside list
    items too, dedented; the language is the fence's info string, e.g. ``bash``, ``""`` or ``{eval-rst}``)."""
    import textwrap

    if text is None:
        return [block for page in pages().values() for block in code_blocks(page)]
    blocks, lang, body = [], None, []
    for line in text.splitlines():
        fence = FENCE.match(line)
        if lang is None:
            if fence:
                lang, body = fence.group(1), []
        elif fence and not fence.group(1):
            blocks.append((lang, textwrap.dedent("\n".join(body) + "\n")))
            lang = None
        else:
            body.append(line)
    assert lang is None, "a code block is not closed"
    return blocks


def page_commands(text: str) -> list:
    """The commands one page shows, in order: code blocks first, then the INLINE ones its prose names."""
    cmds = []
    for lang, body in code_blocks(text):
        for line in body.splitlines():
            if lang == "bash" and line.strip() and not line.lstrip().startswith("#"):
                cmds.append(re.sub(r"\s+#.*$", "", line).strip())
            elif lang == "" and line.startswith("$ "):
                cmds.append(line[2:].strip())
    prose = re.sub(r"\s+", " ", text)  # inline code may wrap across lines
    return cmds + [c for c in INLINE if f"`{c}`" in prose]


def readme_commands() -> list:
    return page_commands(README)


def shown_commands() -> dict:
    """Each command shown anywhere -> the pages that show it."""
    out: dict = {}
    for name, text in pages().items():
        for cmd in page_commands(text):
            out.setdefault(cmd, []).append(name)
    return out


def streamcl_cmd(cmd: str) -> list:
    args = shlex.split(cmd)
    assert args[0] == "streamcl"
    return [sys.executable, "-m", "streamcl", *args[1:]]


def env(tmp: Path) -> dict:
    e = dict(os.environ, OMP_NUM_THREADS="1", HOME=str(tmp / "home"), STREAMCL_DATA=str(tmp / "cache"))
    e.pop("STREAMCL_FAILPOINT", None)
    return e


def clone(tmp: Path) -> Path:
    """A scratch folder with the repository's experiments and example files (commands run from it)."""
    work = tmp / "clone"
    shutil.copytree(ROOT / "experiments", work / "experiments")
    shutil.copytree(ROOT / "tests" / "custom_example", work / "tests" / "custom_example")
    return work


def run(cmd: str, cwd: Path, tmp: Path, timeout: int = 900) -> subprocess.CompletedProcess:
    return subprocess.run(streamcl_cmd(cmd), cwd=cwd, env=env(tmp), capture_output=True, text=True,
                          timeout=timeout)


PUBLISHED = "streamcl report --published experiments/wa experiments/dytox experiments/mas experiments/paper"
DOCS_BUILD = "python -m sphinx -W --keep-going -b html docs site"


# -- the list itself ---------------------------------------------------------------------------------

TESTED = {
    DEMO: "test_demo_command",
    TESTS: "CI (.ci/run runs it)",
    ERROR_EXAMPLE: "test_error_example_prints_what_the_readme_shows",
    "streamcl run experiments/demo.yaml --dry-run -o runs=[0] -o methods.crumb.plugins[0].memory=417":
        "test_fast_commands",
    "streamcl run tests/custom_example/custom.yaml": "test_fast_commands",
    "streamcl run experiments/synthetic/sweep_demo.yaml --dry-run": "test_fast_commands",
    "streamcl run experiments/synthetic/sweep_demo.yaml --only cell=crumb-lr0.01*": "test_sweep_commands",
    "streamcl status experiments/synthetic/sweep_demo.yaml": "test_sweep_commands",
    "streamcl run experiments/synthetic/sweep_demo.yaml --launcher slurm -o launcher.executor=local":
        "test_launcher_commands",
    "streamcl run experiments/synthetic/sweep_demo.yaml --launcher ray": "test_launcher_commands",
    "torchrun --nproc_per_node 2 -m streamcl run experiments/synthetic/ddp_tiny.yaml": "test_torchrun_command",
    "streamcl prepare toybox /data/toybox_raw --out /data/toybox": "test_prepare_commands",
    "streamcl prepare ilab2mlight /data/ilab --out /data/ilab_index": "test_prepare_commands",
    "streamcl prepare core50 /data/core50 --out /data/core50_index": "test_prepare_commands",
    "streamcl prepare icubworld /data/icub --out /data/icub_index": "test_prepare_commands",
    "tensorboard --logdir runs/demo": "test_tensorboard_and_report",
    "streamcl report runs/demo": "test_tensorboard_and_report",
    "streamcl report runs/demo --format latex": "test_tensorboard_and_report",
    PUBLISHED: "test_published_targets_table_is_the_reports",
    "streamcl run experiments/synthetic/paper_toybox.yaml": "test_paper_toybox_command",
    "streamcl run experiments/demo.yaml -o runs=1": "test_demo_one_run_command",
    "python tests/fault/test_config_fuzz.py 7": "test_fuzz_replay_command",
    "streamcl list": "test_fast_commands",
    "streamcl run experiments/demo.yaml": "test_demo_command",
    DOCS_BUILD: "tests/test_docs.py::test_docs_build",
    "OMP_NUM_THREADS=1 python perf/bench_wa_vs_replay.py --epochs 20 --methods replay wa wa_balanced wa_paperloss "
    "--diagnose": "tests/test_wa_vs_replay.py::test_bench_commands_as_the_docs_show_them",
    "OMP_NUM_THREADS=1 python perf/bench_wa_vs_replay.py --epochs 20 --heads linear_nobias incremental --methods "
    "replay wa": "tests/test_wa_vs_replay.py::test_bench_commands_as_the_docs_show_them",
}


def test_readme_starts_with_the_two_commands():
    assert readme_commands()[:2] == [DEMO, TESTS], "the README must start with the two commands"


def test_every_shown_command_is_tested():
    shown = shown_commands()
    untested = {c: where for c, where in shown.items() if c not in TESTED}
    unshown = sorted(set(TESTED) - set(shown))
    assert not untested and not unshown, f"shown but not tested: {untested}; tested but not shown: {unshown}"


def test_tested_commands_name_real_tests():
    """Each TESTED entry names a test function that exists (here, or in the file it gives)."""
    for cmd, how in TESTED.items():
        if how.startswith("CI "):
            continue
        file, _, name = how.rpartition("::")
        source = (ROOT / file).read_text() if file else Path(__file__).read_text()
        assert re.search(rf"^def {re.escape(name)}\(", source, re.M), (cmd, how)


def test_readme_is_short_and_links_to_pages_that_exist():
    """What a newcomer needs; the rest is in docs/ (relative links, so GitHub renders them)."""
    n = len(README.splitlines())
    assert n < README_MAX_LINES, f"README.md has {n} lines: move sections into docs/ pages"
    links = re.findall(r"\]\(([^)\s]+)\)", README)
    local = [link.split("#")[0] for link in links if not re.match(r"[a-z]+://", link)]
    assert any(link.startswith("docs/") for link in local)
    for link in local:
        assert (ROOT / link).is_file(), f"README links to {link}, which does not exist"


def test_ci_runs_the_readme_test_command():
    ci = (ROOT / ".ci" / "run").read_text()
    assert "n==2" in ci  # .ci/run extracts the second bash block: the test command above


# -- the commands --------------------------------------------------------------------------------------


def test_error_example_prints_what_the_readme_shows(tmp_path):
    shown = next(b for lang, b in code_blocks() if lang == "" and f"$ {ERROR_EXAMPLE}" in b)
    expected = shown.split(f"$ {ERROR_EXAMPLE}\n", 1)[1].strip()
    proc = run(ERROR_EXAMPLE, ROOT, tmp_path, timeout=300)
    assert proc.returncode == 2
    assert proc.stderr.strip() == expected


@pytest.mark.parametrize("cmd", [c for c, how in TESTED.items() if how == "test_fast_commands"])
def test_fast_commands(tmp_path, cmd):
    work = clone(tmp_path)
    proc = run(cmd, work, tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]


def test_sweep_commands(tmp_path):
    """Part of a sweep, then its status: two cells finished, two not started."""
    work = clone(tmp_path)
    cmds = [c for c, how in TESTED.items() if how == "test_sweep_commands"]
    proc = run(cmds[0], work, tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert sorted(p.name for p in (work / "runs" / "synthetic_sweep_demo").iterdir() if p.name.startswith("crumb")) \
        == ["crumb-lr0.01-n_blocks32", "crumb-lr0.01-n_blocks64"]
    proc = run(cmds[1], work, tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "2 finished, 0 running, 0 interrupted, 2 not started" in proc.stdout, proc.stdout


@pytest.mark.slow
def test_launcher_commands(tmp_path):
    """The sweep through submitit's local executor, then through Ray: the same summary table."""
    work = clone(tmp_path)
    tables = []
    for i, cmd in enumerate(c for c, how in TESTED.items() if how == "test_launcher_commands"):
        proc = run(cmd + f" -q -o output_dir=out{i}", work, tmp_path)
        assert proc.returncode == 0, (cmd, proc.stderr[-2000:])
        table = (work / f"out{i}" / "synthetic_sweep_demo" / "summary.csv").read_text().splitlines()
        tables.append([",".join(row.split(",")[:6]) for row in table])  # wall time aside
    assert tables[0] == tables[1] and len(tables[0]) == 5


@pytest.mark.slow
def test_torchrun_command(tmp_path):
    """The torchrun line (docs/cluster.md): two gloo processes, rank 0 writes the one summary."""
    work = clone(tmp_path)
    cmd = next(c for c, how in TESTED.items() if how == "test_torchrun_command")
    args = shlex.split(cmd)
    torchrun = Path(sys.executable).parent / "torchrun"
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    argv = [str(torchrun), "--master_addr", "127.0.0.1", "--master_port", str(port), *args[1:]]
    proc = subprocess.run(argv, cwd=work, env=env(tmp_path), capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    root = work / "runs" / "ddp_tiny"
    assert (root / "summary.csv").exists()
    assert len(list((root / "crumb" / "run0" / "tb").glob("events.*"))) == 1
    assert proc.stdout.count("Results:") == 1  # printed by rank 0 only


def test_prepare_commands(tmp_path):
    from streamcl.benchmarks import synthetic

    work = clone(tmp_path)
    data = tmp_path / "data"
    raw = {"toybox": "toybox_raw", "ilab2mlight": "ilab", "core50": "core50", "icubworld": "icub"}
    for name, folder in raw.items():
        synthetic.generate(name, data / folder, n_classes=2, n_objects=1, image_size=32)
    for cmd, how in TESTED.items():
        if how != "test_prepare_commands":
            continue
        proc = run(cmd.replace("/data/", f"{data}/"), work, tmp_path)
        assert proc.returncode == 0, (cmd, proc.stderr[-2000:])
        out = Path(shlex.split(cmd)[-1].replace("/data/", f"{data}/"))
        assert (out / "dirmap.csv").exists(), cmd


@pytest.fixture(scope="module")
def finished_demo(tmp_path_factory):
    """``runs/demo`` of a small demo-shaped experiment (one run, two methods), for report and TensorBoard."""
    tmp = tmp_path_factory.mktemp("demo")
    work = clone(tmp)
    proc = run("streamcl run experiments/demo.yaml -q -o runs=[0] -o threads=1 -o pretrain.epochs=1 "
               "-o 'methods={naive: {}, crumb: {plugins: [{name: crumb, memory: 40, n_blocks: 32, block_dim: 8}]}}'",
               work, tmp)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return work, tmp


def test_published_targets_table_is_the_reports(tmp_path):
    """The published-targets table (docs/methods.md) is what `streamcl report --published` prints from the YAMLs."""
    proc = run(PUBLISHED, ROOT, tmp_path, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    printed = proc.stdout.split("\n", 2)[2].strip()  # without its "## Published targets" heading
    begin, end = "<!-- published-targets: begin -->", "<!-- published-targets: end -->"
    (page, text), = [(name, text) for name, text in pages().items() if begin in text]
    shown = text.split(begin)[1].split(end)[0]
    assert shown.strip() == printed, f"regenerate the table in {page} with: {PUBLISHED}"


@pytest.mark.slow
def test_tensorboard_and_report(finished_demo):
    work, tmp = finished_demo
    proc = run("streamcl report runs/demo", work, tmp)
    assert proc.returncode == 0, proc.stderr
    assert (work / "runs" / "demo" / "report" / "accuracy_curve.png").stat().st_size > 0
    assert "avg incremental accuracy" in proc.stdout and "Paired differences" in proc.stdout
    proc = run("streamcl report runs/demo --format latex", work, tmp)
    assert proc.returncode == 0, proc.stderr
    assert r"\toprule" in (work / "runs" / "demo" / "report" / "report.tex").read_text()
    # TensorBoard serves the demo's events (on loopback, an ephemeral port).
    tb = shutil.which("tensorboard", path=str(Path(sys.executable).parent))
    assert tb, "tensorboard is a dependency of streamcl"
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = subprocess.Popen([tb, "--logdir", "runs/demo", "--host", "127.0.0.1", "--port", str(port)],
                              cwd=work, env=env(tmp), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        import json
        import urllib.request

        deadline = time.time() + 120
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/data/runs", timeout=5) as r:
                    runs = json.loads(r.read())
                if runs:
                    break
            except OSError:
                pass
            assert time.time() < deadline, "TensorBoard did not list the demo's runs"
            time.sleep(1)
        assert any("crumb" in r for r in runs)
    finally:
        server.terminate()
        server.wait(timeout=30)


@pytest.mark.slow
def test_demo_command(tmp_path):
    """The first command's run part, from a clean clone's layout: the whole demo, as shipped."""
    work = clone(tmp_path)
    proc = run("streamcl run experiments/demo.yaml", work, tmp_path, timeout=1800)
    assert proc.returncode == 0, proc.stderr[-2000:]
    table = (work / "runs" / "demo" / "summary.md").read_text()
    for cell in ("naive", "ewc", "mas", "lwf", "replay", "crumb", "remind"):
        assert f"| {cell} | 3 |" in table


def test_fuzz_replay_command(tmp_path):
    proc = subprocess.run([sys.executable, "tests/fault/test_config_fuzz.py", "7"], cwd=ROOT, env=env(tmp_path),
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "streamcl run" in proc.stdout and "--dry-run" in proc.stdout


@pytest.mark.slow
def test_demo_one_run_command(tmp_path):
    work = clone(tmp_path)
    proc = run("streamcl run experiments/demo.yaml -o runs=1", work, tmp_path, timeout=1800)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "| remind | 1 |" in (work / "runs" / "demo" / "summary.md").read_text()


@pytest.mark.slow
def test_paper_toybox_command(tmp_path):
    work = clone(tmp_path)
    proc = run("streamcl run experiments/synthetic/paper_toybox.yaml", work, tmp_path, timeout=3600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "crumb" in (work / "runs").rglob("summary.md").__next__().read_text()


@pytest.mark.slow
def test_python_snippet_runs(tmp_path):
    """The "From Python" snippet, on a synthetic Toybox folder and random SqueezeNet weights."""
    import torch
    import torchvision

    from streamcl.benchmarks import synthetic
    from streamcl.benchmarks.prepare import prepare

    (snippet,) = [b for lang, b in code_blocks() if lang == "python" and "CRUMBPlugin" in b]
    raw = synthetic.generate("toybox", tmp_path / "raw", n_classes=12, n_objects=1, image_size=32)
    prepared = prepare("toybox", raw, tmp_path / "toybox", progress=False, frame_size=32)
    weights = tmp_path / "squeezenet1_0.pth"
    torch.save(torchvision.models.squeezenet1_0().state_dict(), weights)
    code = snippet.replace('"/data/toybox"', repr(str(prepared))).replace('"/path/to/squeezenet1_0.pth"',
                                                                          repr(str(weights)))
    assert code != snippet
    script = tmp_path / "snippet.py"
    script.write_text(code)
    proc = subprocess.run([sys.executable, str(script)], env=env(tmp_path), capture_output=True, text=True,
                          timeout=1800)
    assert proc.returncode == 0, proc.stderr[-2000:]
