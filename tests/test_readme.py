"""The README stays true: its python blocks run as written, its commands and flags exist, its links resolve, its
versions table agrees with the packaging, and it stays short. The timm-style recipe it points to (docs/mixing.md)
runs too."""

import re
import shlex
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
MIXING = (ROOT / "docs" / "mixing.md").read_text()

# Pages written on another branch that the README already links (the lead merges them); a link to any other
# missing file fails.
PENDING: set[str] = set()


def blocks(text: str, lang: str) -> list[str]:
    return re.findall(rf"```{lang}\n(.*?)```", text, re.S)


@pytest.mark.usefixtures("one_thread")
def test_readme_python_blocks_run_in_order(capsys):
    """The quickstart trains a few steps; the timm block reuses its model and data, as a reader would."""
    code = blocks(README, "python")
    assert len(code) >= 2, "README has the quickstart and the timm block"
    namespace: dict = {}
    for block in code:
        exec(compile(block, "README.md", "exec"), namespace)
    assert "kernels: {'cpu':" in capsys.readouterr().out
    assert namespace["targets"].shape == (16, 10)


def test_readme_is_short():
    assert len(README.splitlines()) <= 150


@pytest.mark.usefixtures("one_thread")
def test_timm_style_recipe_runs(capsys):
    """The recipe drops patchmix into a timm-style loop (DataLoader workers, MixCollate, PatchMixLoss, EMA)."""
    recipe = [b for b in blocks(MIXING, "python") if "timm: Mixup(" in b]
    assert len(recipe) == 1, "docs/mixing.md has the timm-style recipe"
    exec(compile(recipe[0], "docs/mixing.md", "exec"), {})
    assert "trained 12 steps" in capsys.readouterr().out


def _commands(text: str) -> list[list[str]]:
    """Every command line of the bash blocks, comments dropped, continuation lines joined."""
    lines = []
    for block in blocks(text, "bash"):
        for line in block.replace("\\\n", " ").splitlines():
            line = line.split("  #")[0].strip()
            if line and not line.startswith("#"):
                lines.append(shlex.split(line.replace("<this repository>", "URL")))
    return lines


def test_readme_dev_commands_exist():
    dev = (ROOT / "dev").read_text()
    used = {words[1] for words in _commands(README) if words[0] == "./dev"}
    assert used == {"run", "test"}
    for name in used:
        assert re.search(rf"^\s+{name}\)", dev, re.M), f"./dev has no command {name!r}"


def test_readme_patchmix_commands_parse():
    """Every `patchmix ...` line of the README is accepted by the parser: the command and each flag exist."""
    from patchmix.cli import build_parser

    lines = [words[1:] for words in _commands(README) if words[0] == "patchmix"]
    assert {args[0] if args else "run" for args in lines} >= {"run", "train", "search", "show", "eval", "ablate"}
    for args in lines:
        build_parser().parse_args(args)


def _anchors(markdown: str) -> set[str]:
    """GitHub's heading anchors: lower case, punctuation dropped except ``-`` and ``_``, spaces to hyphens."""
    headings = re.findall(r"^#+ (.+)$", re.sub(r"```.*?```", "", markdown, flags=re.S), re.M)
    return {re.sub(r"[^\w\- ]", "", h.strip().lower()).replace(" ", "-") for h in headings}


@pytest.mark.parametrize("page", ["README.md", "docs/README.md", "docs/cli.md", "docs/install.md", "docs/mixing.md"])
def test_links_resolve(page):
    """Every relative link names a file that exists, and a heading of it where it names one."""
    path = ROOT / page
    missing = []
    for target, anchor in re.findall(r"\]\(([^)#\s]*)(?:#([^)\s]*))?\)", path.read_text()):
        if "://" in target:
            continue
        resolved = (path.parent / target).resolve() if target else path
        if str(resolved.relative_to(ROOT)) in PENDING:
            continue
        if not resolved.exists():
            missing.append(target)
        elif anchor and resolved.suffix == ".md" and anchor not in _anchors(resolved.read_text()):
            missing.append(f"{target}#{anchor}")
    assert not missing, f"{page} links to missing files or headings: {missing}"


def test_readme_versions_table_agrees_with_the_packaging():
    pyproject = (ROOT / "pyproject.toml").read_text()  # read as text: tomllib needs Python 3.11
    assert 'requires-python = ">=3.10"' in pyproject
    assert 'triton = ["triton>=3.6,<3.10"]' in pyproject
    assert 'TORCH_RANGE = "torch>=2.11,<2.15"' in (ROOT / "setup.py").read_text()
    rows = {row.split("|")[1].strip(): row.split("|")[2].strip() for row in README.splitlines()
            if row.startswith("| Python") or row.startswith("| torch") or row.startswith("| Triton")}
    assert rows == {"Python": ">= 3.10", "torch": "2.11 to 2.14", "Triton (CUDA kernels)": "3.6 to 3.9"}


def test_readme_cites_the_paper():
    text = " ".join(README.split())
    for fact in ("Paola Cascante-Bonilla", "Arshdeep Sekhon", "Yanjun Qi", "Vicente Ordonez",
                 "Evolving Image Compositions for Feature Representation Learning", "BMVC 2021", "arXiv:2106.09011",
                 "CITATION.cff"):
        assert fact in text


def test_readme_picture_is_committed():
    pictures = re.findall(r"!\[[^\]]*\]\(([^)]+\.png)\)", README)
    assert pictures and all((ROOT / p).is_file() for p in pictures)


def test_sample_frames_follow_the_integer_cell_rule():
    """The picture's per-patch frames cover the pixels the ops assign to each cell: ``floor(h * P / H)``."""
    from patchmix.workflow.figures import _cell_edges

    for size in (8, 28, 30, 32, 33, 64, 224):
        for P in range(1, min(size, 9) + 1):
            edges = _cell_edges(size, P)
            cell_of = [r for r in range(P) for _ in range(edges[r], edges[r + 1])]
            assert cell_of == [h * P // size for h in range(size)], (size, P)
