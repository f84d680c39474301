"""The README's demo command, in its no-display form: the real console script, a real window."""

import os
import shutil
import subprocess
import sys

import imageio.v3 as iio


def test_glandseg_gui_screenshot(tmp_path):
    exe = shutil.which("glandseg") or os.path.join(os.path.dirname(sys.executable), "glandseg")
    out = tmp_path / "demo.png"
    proc = subprocess.run([exe, "gui", "--sample", "glas", "--screenshot", str(out)],
                          capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr[-2000:]
    img = iio.imread(out)
    assert img.shape[0] > 600 and img.shape[1] > 1000
    assert img[..., :3].std() > 20  # a real picture, not a blank window
