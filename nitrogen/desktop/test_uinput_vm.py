"""The virtual pad on a real kernel's uinput: tools/vm_uinput.py boots Debian's kernel under qemu.

Inside the VM the project's Xbox 360 pad is created on ``/dev/uinput`` and a scripted sequence of
states is read back with python-evdev and with SDL's game-controller API (pygame). About 1-2
minutes of software emulation; skips where qemu, the Debian kernel, busybox, evdev or pygame are
missing (``.ci/run`` installs them).
"""

from __future__ import annotations

import importlib.util
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

TOOL = Path(__file__).resolve().parents[2] / "tools" / "vm_uinput.py"


def _missing() -> list[str]:
    missing = [name for name in ("qemu-system-x86_64", "busybox", "cpio", "modprobe") if shutil.which(name) is None]
    if not [p for p in Path("/boot").glob("vmlinuz-*") if "cloud" not in p.name]:
        missing.append("a Debian kernel (linux-image-amd64)")
    missing += [mod for mod in ("evdev", "pygame") if importlib.util.find_spec(mod) is None]
    return missing


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="uinput is Linux-only")
def test_virtual_pad_in_a_real_kernel_reads_back_through_evdev_and_sdl() -> None:
    if not TOOL.exists():
        pytest.skip("tools/vm_uinput.py is not in this checkout")
    missing = _missing()
    if missing:
        pytest.skip(f"the uinput VM needs {', '.join(missing)}")
    proc = subprocess.run(
        [sys.executable, str(TOOL), "--timeout", "540"], capture_output=True, text=True, timeout=600, check=False
    )
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    assert lines, proc.stdout[-3000:] + proc.stderr[-2000:]
    result = json.loads(lines[-1].removeprefix("RESULT "))
    assert result["capabilities_match"], result
    assert result["evdev"] == {"name": "Microsoft X-Box 360 pad", "vendor": "0x45e", "product": "0x28e"}
    assert "360" in result["sdl"]["controller_name"], result["sdl"]
    assert result["evdev_ok"] and result["sdl_ok"] and not result["mismatches"], result["mismatches"]
    assert result["states"] == 8
    assert proc.returncode == 0, proc.stdout[-3000:]
