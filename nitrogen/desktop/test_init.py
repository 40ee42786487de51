"""The package's lazy public names."""

from __future__ import annotations

import subprocess
import sys

from nitrogen import desktop
from nitrogen.errors import NitrogenError


def test_every_export_resolves() -> None:
    assert sorted(desktop._EXPORTS) == desktop.__all__
    for name in desktop.__all__:
        assert getattr(desktop, name) is not None, name
    assert issubclass(desktop.PadUnavailableError, NitrogenError)
    assert issubclass(desktop.ProcessNotFoundError, LookupError)


def test_import_is_light_and_works_off_windows() -> None:
    code = (
        "import sys, nitrogen.desktop, nitrogen.desktop.windows, nitrogen.desktop.uinput_pad\n"
        "heavy = {'cv2', 'Xlib', 'mss', 'torch', 'vgamepad', 'dxcam'} & set(sys.modules)\n"
        "assert not heavy, heavy\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
