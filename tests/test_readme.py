"""The README's python examples run as written: the usage example and the timm-style recipe."""

import re
from pathlib import Path

import pytest

README = (Path(__file__).resolve().parents[1] / "README.md").read_text()
BLOCKS = re.findall(r"```python\n(.*?)```", README, re.S)


def test_readme_usage_example_runs(capsys):
    assert BLOCKS, "README has a python usage example"
    exec(compile(BLOCKS[0], "README.md", "exec"), {})
    assert "grid_mix" in capsys.readouterr().out


@pytest.mark.usefixtures("one_thread")
def test_readme_timm_style_recipe_runs(capsys):
    """The recipe drops patchmix into a timm-style loop (DataLoader workers, MixCollate, PatchMixLoss, EMA)."""
    recipe = [b for b in BLOCKS if "timm: Mixup(" in b]
    assert len(recipe) == 1, "README has the timm-style recipe"
    exec(compile(recipe[0], "README.md", "exec"), {})
    assert "trained 12 steps" in capsys.readouterr().out
