"""Project-level checks: the README's setup is what CI runs, and the light API stays light."""

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _setup_commands() -> list[str]:
    readme = (ROOT / "README.md").read_text()
    block = re.search(r"## Setup\s+```bash\n(.*?)```", readme, re.S)
    assert block, "README.md needs a '## Setup' section with a bash block"
    return [line.strip() for line in block.group(1).splitlines() if line.strip()]


def test_ci_runs_the_readme_setup_exactly():
    install, test = _setup_commands()[:2]
    ci_lines = [line.strip() for line in (ROOT / ".ci" / "run").read_text().splitlines()]
    assert test in ci_lines, f"README test command {test!r} is not what .ci/run runs"
    assert "python -m pip install" + install.removeprefix("pip install") in ci_lines or install in ci_lines
    assert ci_lines[-1] == test


def test_import_nitrogen_does_not_import_torch():
    code = "import sys, nitrogen; from nitrogen import BUTTONS, ActionChunk; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    assert out.stdout.strip() == "False"


def test_cli_entry_point_runs():
    out = subprocess.run([sys.executable, "-m", "nitrogen.cli", "--help"], capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 0
    assert "info" in out.stdout and "convert" in out.stdout


def test_every_golden_case_is_covered_by_the_parity_tests():
    import json

    from nitrogen.model.test_parity import CASES

    index = json.loads((ROOT.parent / "shared" / "golden" / "index.json").read_text())
    assert sorted(case["name"] for case in index) == sorted(CASES)
