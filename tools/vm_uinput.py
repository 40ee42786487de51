"""Boot a small Debian kernel under qemu and check the virtual pad on its real uinput (issue 20).

Machines without ``/dev/uinput`` (containers, CI) cannot create the pad; a VM can. This script:

1. builds an initramfs in a temporary folder: static busybox, the virtio and 9p modules of the
   installed Debian kernel, and an ``/init`` that mounts this machine's root file system read-only
   over 9p (``-virtfs``, with a tmpfs on ``/tmp``) and ``chroot``s into it;
2. boots that kernel with qemu under software emulation (TCG; ``--kvm`` uses KVM, which hung on
   the nested KVM of the machine this was written on);
3. inside, loads ``uinput`` and ``evdev`` and runs ``tools/vm_uinput_check.py`` with this
   machine's Python, which creates the project's Xbox 360 pad and reads a scripted sequence of
   states back with python-evdev and with SDL's game-controller API (pygame);
4. prints the check's ``RESULT`` line and the timings; exits non-zero if anything failed.

Needs (Debian): ``apt-get install qemu-system-x86 linux-image-amd64 busybox-static``, and
``pip install evdev pygame`` in the Python that runs the project::

    python tools/vm_uinput.py [--kernel 6.1.0-57-amd64] [--timeout 600] [--kvm]
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
MODULES = ["virtio_pci", "9pnet_virtio", "9p"]

INIT = """#!/bin/busybox sh
/bin/busybox --install -s /bin
mkdir -p /proc /sys /dev /host
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
for m in {modules}; do insmod /modules/$m.ko || echo "insmod $m failed"; done
mount -t 9p -o trans=virtio,version=9p2000.L,ro,cache=loose host /host || echo "9p mount failed"
mount -t proc proc /host/proc
mount -t sysfs sys /host/sys
mount -t devtmpfs dev /host/dev
mount -t tmpfs tmp /host/tmp
{keep}
echo "VM-BOOTED $(cut -d' ' -f1 /proc/uptime)"
chroot /host /bin/sh -c 'modprobe uinput && modprobe evdev && cd {repo} && \
  PYTHONDONTWRITEBYTECODE=1 PYTHONPATH={repo} HOME=/tmp {python} tools/vm_uinput_check.py; echo "VM-EXIT $?"'
echo "VM-DONE $(cut -d' ' -f1 /proc/uptime)"
echo o > /proc/sysrq-trigger
sleep 30
"""


def under_tmp() -> list[Path]:
    """The checkout and the Python prefix, where they lie under /tmp: the guest's /tmp is a fresh
    tmpfs, so each is shared again on its own and mounted back at the same path."""
    paths = sorted({p for p in (REPO, Path(sys.prefix).resolve()) if p.is_relative_to("/tmp")})
    return [p for p in paths if not any(p != q and p.is_relative_to(q) for q in paths)]


def _keep_mounts(paths: list[Path]) -> str:
    return "\n".join(
        f"mkdir -p /host{p} && mount -t 9p -o trans=virtio,version=9p2000.L,ro,cache=loose keep{i} /host{p}"
        for i, p in enumerate(paths)
    )


def kernel_version(requested: str | None) -> str:
    if requested:
        return requested
    found = sorted(p.name.removeprefix("vmlinuz-") for p in Path("/boot").glob("vmlinuz-*") if "cloud" not in p.name)
    if not found:
        raise SystemExit("no Debian kernel in /boot: apt-get install linux-image-amd64 (the cloud kernel lacks uinput)")
    return found[-1]


def module_order(version: str) -> list[Path]:
    """The .ko files to insmod, dependencies first, each once (``modprobe --show-depends``)."""
    order: list[Path] = []
    for name in MODULES:
        out = subprocess.run(
            ["modprobe", "-S", version, "--show-depends", name], check=True, capture_output=True, text=True
        ).stdout
        for line in out.splitlines():
            if line.startswith("insmod "):
                path = Path(line.split()[1])
                if path not in order:
                    order.append(path)
    return order


def build_initramfs(work: Path, version: str) -> Path:
    root = work / "root"
    (root / "bin").mkdir(parents=True)
    (root / "modules").mkdir()
    busybox = shutil.which("busybox")
    if busybox is None:
        raise SystemExit("busybox not found: apt-get install busybox-static")
    shutil.copy(busybox, root / "bin" / "busybox")
    names = []
    for ko in module_order(version):
        shutil.copy(ko, root / "modules" / ko.name)
        names.append(ko.stem)
    init = root / "init"
    init.write_text(
        INIT.format(modules=" ".join(names), repo=REPO, python=sys.executable, keep=_keep_mounts(under_tmp()))
    )
    init.chmod(0o755)
    image = work / "initramfs.cpio"
    files = subprocess.run(["find", "."], cwd=root, check=True, capture_output=True).stdout
    with open(image, "wb") as f:
        subprocess.run(["cpio", "-o", "-H", "newc", "--quiet"], cwd=root, input=files, stdout=f, check=True)
    return image


def kvm_usable() -> bool:
    return os.access("/dev/kvm", os.R_OK | os.W_OK)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--kernel", help="kernel version in /boot (default: the newest non-cloud one)")
    parser.add_argument("--timeout", type=float, default=600.0)
    parser.add_argument("--kvm", action="store_true", help="use KVM instead of software emulation (TCG)")
    parser.add_argument("--memory", default="1536M")
    args = parser.parse_args()
    version = kernel_version(args.kernel)
    qemu = shutil.which("qemu-system-x86_64")
    if qemu is None:
        raise SystemExit("qemu-system-x86_64 not found: apt-get install qemu-system-x86")
    t0 = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="nitrogen-vm-") as tmp:
        image = build_initramfs(Path(tmp), version)
        built = time.monotonic() - t0
        accel = "kvm" if args.kvm and kvm_usable() else "tcg"
        cmd = [
            qemu, "-machine", f"q35,accel={accel}", "-cpu", "host" if accel == "kvm" else "max",
            "-smp", "2", "-m", args.memory, "-nographic", "-no-reboot",
            "-kernel", f"/boot/vmlinuz-{version}", "-initrd", str(image),
            "-append", "console=ttyS0 rdinit=/init panic=-1 quiet loglevel=3",
            "-virtfs", "local,path=/,mount_tag=host,security_model=none,readonly=on,multidevs=remap",
        ]  # fmt: skip
        for i, path in enumerate(under_tmp()):
            cmd += ["-virtfs", f"local,path={path},mount_tag=keep{i},security_model=none,readonly=on,multidevs=remap"]
        print(f"booting {version} with {accel} ...", flush=True)
        t1 = time.monotonic()
        try:
            proc = subprocess.run(
                cmd, check=False, capture_output=True, text=True, timeout=args.timeout, stdin=subprocess.DEVNULL
            )
            out = proc.stdout + proc.stderr
        except subprocess.TimeoutExpired as exc:
            partial = exc.stdout or b""
            print((partial.decode(errors="replace") if isinstance(partial, bytes) else partial)[-4000:])
            print(f"TIMEOUT after {args.timeout:g} s")
            return 2
        wall = time.monotonic() - t1
    result = next((line for line in out.splitlines() if line.startswith("RESULT ")), None)
    status = re.search(r"VM-EXIT (\d+)", out)
    booted = re.search(r"VM-BOOTED ([\d.]+)", out)
    print("\n".join(line for line in out.splitlines() if not line.startswith("RESULT "))[-3000:])
    print(result or "no RESULT line: the check did not run")
    print(
        f"TIMING initramfs {built:.1f} s, VM wall {wall:.1f} s (kernel up at {booted.group(1) if booted else '?'} s "
        f"of guest uptime), accel {accel}"
    )
    return 0 if status is not None and status.group(1) == "0" and result is not None else 1


if __name__ == "__main__":
    sys.exit(main())
