"""The docs as a user reads them (docs/design.md §8): every Python block tagged `python cpu` in README.md and docs/
runs as written on a CPU; every relative link points to a file (and heading) that exists; the README stays a front
page whose first Python block is one of the runnable ones, and gives the commands CI and the install tests use."""
import glob
import os
import re
import resource
import subprocess
import sys
import tomllib

import pytest

from tests.helpers import ROOT

README = os.path.join(ROOT, "README.md")
DOCS = [README] + sorted(glob.glob(os.path.join(ROOT, "docs", "**", "*.md"), recursive=True))
FENCE = re.compile(r"^(?P<indent> *)(?P<fence>`{3,})(?P<info>[^`]*)$")
# A block that runs as written on a CPU, and one that does not (needs a GPU, a trained model, a package outside
# the extras, or names defined elsewhere). Every Python block carries one of the two tags.
RUNNABLE, SCHEMATIC = "cpu", "schematic"
# The wall-clock cap leaves room for a busy CI machine; the CPU budget keeps each block small whatever the load (the
# slowest, docs/pipeline.md's torch.export, takes 12 s of CPU on the 2-core build machine).
BLOCK_TIMEOUT_S, BLOCK_CPU_S = 120, 30


def rel(path):
    return os.path.relpath(path, ROOT)


def fenced_blocks(path):
    """(line number, info words, code) of every fenced block of the Markdown file, code dedented to its fence."""
    blocks, lines = [], open(path, encoding="utf-8").read().splitlines()
    i = 0
    while i < len(lines):
        m = FENCE.match(lines[i])
        if not m:
            i += 1
            continue
        indent, fence, start = len(m["indent"]), m["fence"], i
        body, i = [], i + 1
        while i < len(lines) and lines[i].strip() != fence:
            body.append(lines[i][indent:] if lines[i][:indent].strip() == "" else lines[i])
            i += 1
        assert i < len(lines), f"{rel(path)}:{start + 1}: a code block that is never closed"
        blocks.append((start + 1, m["info"].split(), "\n".join(body) + "\n"))
        i += 1
    return blocks


def python_blocks(path):
    return [(line, info, code) for line, info, code in fenced_blocks(path) if info and info[0] == "python"]


RUNNABLE_BLOCKS = [(rel(path), line, code) for path in DOCS for line, info, code in python_blocks(path)
                   if RUNNABLE in info[1:]]


@pytest.mark.parametrize("path, line, code", RUNNABLE_BLOCKS,
                         ids=[f"{path}:{line}" for path, line, _ in RUNNABLE_BLOCKS])
def test_runnable_block_runs_on_a_cpu(path, line, code, tmp_path):
    """Each block in a fresh interpreter, as a user on a CPU machine runs it: the checkout on PYTHONPATH, no GPU, and
    none of the test suite's TRITON_INTERPRET (a user's CPU runs the torch composites; the Triton kernels have their
    own tests under the interpreter). Autotuning is off and its cache private, so nothing is timed or written
    outside tmp_path, which is also the working directory for whatever the block saves."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env.update(PYTHONPATH=ROOT + os.pathsep + env.get("PYTHONPATH", ""), CUDA_VISIBLE_DEVICES="",
               GIGAGAN_KERNELS_AUTOTUNE="off", GIGAGAN_KERNELS_CACHE_DIR=str(tmp_path / "cache"))
    script = tmp_path / "block.py"
    script.write_text(code)
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    try:
        proc = subprocess.run([sys.executable, str(script)], cwd=tmp_path, env=env, capture_output=True, text=True,
                              timeout=BLOCK_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        pytest.fail(f"{path}:{line}: the block ran past {BLOCK_TIMEOUT_S} s")
    assert proc.returncode == 0, f"{path}:{line} failed:\n{proc.stderr[-3000:]}"
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime
    print(f"{path}:{line}: {cpu:.1f} s of CPU")
    assert cpu < BLOCK_CPU_S, f"{path}:{line} took {cpu:.1f} s of CPU; keep a docs block under {BLOCK_CPU_S} s"


def test_every_python_block_says_whether_it_runs_on_a_cpu():
    untagged = [f"{rel(path)}:{line} ```{' '.join(info)}" for path in DOCS for line, info, _ in python_blocks(path)
                if not {RUNNABLE, SCHEMATIC} & set(info[1:])]
    assert not untagged, f"Python blocks tagged neither `python {RUNNABLE}` nor `python {SCHEMATIC}`: {untagged}"
    assert len(RUNNABLE_BLOCKS) >= 5, RUNNABLE_BLOCKS


def test_the_readme_is_a_front_page_whose_first_python_block_runs():
    lines = open(README, encoding="utf-8").read().splitlines()
    assert len(lines) <= 150, f"README.md has {len(lines)} lines; the details belong in docs/"
    first = python_blocks(README)[0]
    assert first[1] == ["python", RUNNABLE], f"README.md:{first[0]}: the first Python block must be `python cpu`"
    assert ".cuda()" not in first[2] and "torch.randn" in first[2]


def test_the_readme_gives_the_two_commands_that_ci_and_users_run():
    bash = [code for _, info, code in fenced_blocks(README) if info[:1] == ["bash"]]
    commands = [ln.strip() for code in bash for ln in code.splitlines() if ln.strip().startswith("bash scripts/")]
    assert commands == ["bash scripts/main.sh", "bash scripts/test.sh"], commands
    for command in commands:
        assert os.path.isfile(os.path.join(ROOT, command.split()[1]))
    ci = open(os.path.join(ROOT, ".ci", "run")).read()
    assert re.search(r"^bash scripts/test\.sh\b", ci, re.M), "CI must run the README's test command"


def test_the_readme_install_lines_name_real_extras_and_files():
    install = [code for _, info, code in fenced_blocks(README) if info[:1] == ["bash"]][0]
    pips = [ln.split("#")[0].split() for ln in install.splitlines() if ln.startswith("pip install")]
    assert len(pips) == 2, install
    with open(os.path.join(ROOT, "pyproject.toml"), "rb") as f:
        extras = set(tomllib.load(f)["project"]["optional-dependencies"])
    for words in pips:
        target = words[words.index("-e") + 1].strip("\"'")
        assert target.startswith(".["), words
        assert set(target[2:-1].split(",")) <= extras and {"train", "eval", "dev"} <= set(target[2:-1].split(","))
    assert pips[1][pips[1].index("-r") + 1] == "requirements-cpu.txt"
    assert os.path.isfile(os.path.join(ROOT, "requirements-cpu.txt"))


def slug(heading):
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def anchors(path):
    text = open(path, encoding="utf-8").read()
    in_code = set()
    for line, _, code in fenced_blocks(path):
        in_code.update(range(line, line + code.count("\n") + 2))
    return {slug(m.group(1)) for n, ln in enumerate(text.splitlines(), 1) if n not in in_code
            for m in [re.match(r"#{1,6} (.*)", ln)] if m}


LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")


def relative_links(path):
    """(line, target) of every Markdown link outside code blocks and inline code that is not a URL."""
    in_code = set()
    for line, _, code in fenced_blocks(path):
        in_code.update(range(line, line + code.count("\n") + 2))
    links = []
    for n, ln in enumerate(open(path, encoding="utf-8").read().splitlines(), 1):
        if n in in_code:
            continue
        for target in LINK.findall(re.sub(r"`[^`]*`", "", ln)):
            if not re.match(r"[a-z][a-z0-9+.-]*:", target):
                links.append((n, target))
    return links


def test_every_relative_link_points_to_an_existing_file_and_heading():
    broken, count = [], 0
    for path in DOCS:
        for line, target in relative_links(path):
            count += 1
            file, _, anchor = target.partition("#")
            dest = os.path.normpath(os.path.join(os.path.dirname(path), file)) if file else path
            where = f"{rel(path)}:{line} -> {target}"
            if not os.path.exists(dest):
                broken.append(f"{where} (no such file)")
            elif anchor and dest.endswith(".md") and anchor not in anchors(dest):
                broken.append(f"{where} (no such heading)")
    assert count >= 20
    assert not broken, "\n".join(broken)


def test_the_link_check_sees_a_broken_link(tmp_path):
    page = tmp_path / "page.md"
    page.write_text("# Top\n[ok](page.md#top) [gone](missing.md) `[code](missing2.md)`\n"
                    "```bash\n[in code](missing3.md)\n```\n[bad anchor](#nowhere) [web](https://example.com)\n")
    assert relative_links(str(page)) == [(2, "page.md#top"), (2, "missing.md"), (6, "#nowhere")]
    assert anchors(str(page)) == {"top"}
