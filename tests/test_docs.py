"""The README's promises that can be checked mechanically."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _bash_blocks(text):
    return re.findall(r"```bash\n(.*?)```", text, flags=re.S)


def test_readme_opens_with_the_two_commands_and_ci_runs_the_test_one():
    readme = (ROOT / "README.md").read_text()
    blocks = _bash_blocks(readme)
    train_command, test_command = blocks[0].strip(), blocks[1].strip()
    assert "nanoae train" in train_command and train_command.startswith("python3 -m venv .venv")
    assert "pytest" in test_command and test_command.startswith("python3 -m venv .venv")
    ci_lines = [line.strip() for line in (ROOT / ".ci" / "run").read_text().splitlines()]
    assert test_command in ci_lines


def test_readme_layout_lists_every_module():
    readme = (ROOT / "README.md").read_text()
    for path in sorted((ROOT / "nanoae").glob("*.py")):
        if path.name not in ("__init__.py", "__main__.py"):
            assert path.name in readme, f"README's layout does not mention {path.name}"
