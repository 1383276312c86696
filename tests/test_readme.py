"""The README's usage example runs as written."""

import re
from pathlib import Path


def test_readme_usage_example_runs(capsys):
    text = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, re.S)
    assert blocks, "README has a python usage example"
    exec(compile(blocks[0], "README.md", "exec"), {})
    assert "grid_mix" in capsys.readouterr().out
