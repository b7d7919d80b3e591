"""The README's examples run as written."""

import re
from pathlib import Path

README = (Path(__file__).resolve().parents[1] / "README.md").read_text()


def test_readme_example_runs():
    example = re.search(r"## Example\n\n```python\n(.*?)```", README, re.S).group(1)
    exec(compile(example, "README.md example", "exec"), {})


def test_checkpoints_section_snippets_run():
    """Every python block of "Checkpoints, deployment and installs", in order, in one namespace
    (each block continues the one before, as a reader would run them)."""
    section = README.split("## Checkpoints, deployment and installs\n", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```python\n(.*?)```", section, re.S)
    assert len(blocks) == 3
    namespace: dict = {}
    for i, block in enumerate(blocks):
        exec(compile(block, f"README.md checkpoints block {i}", "exec"), namespace)
    assert type(namespace["model"][0]).__name__ == "GRU" and type(namespace["policy"]).__module__ == "fusedrnn.modules"
