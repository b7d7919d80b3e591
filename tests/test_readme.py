"""The README's example runs as written."""

import re
from pathlib import Path


def test_readme_example_runs():
    text = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    example = re.search(r"## Example\n\n```python\n(.*?)```", text, re.S).group(1)
    exec(compile(example, "README.md example", "exec"), {})
