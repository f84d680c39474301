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


def test_gui_without_a_display_says_so_in_one_line(monkeypatch, capsys):
    import sys

    from napari_glandseg.cli import main

    for var in ("DISPLAY", "WAYLAND_DISPLAY", "QT_QPA_PLATFORM"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(sys, "platform", "linux")
    assert main(["gui", "--sample", "none"]) == 2
    err = capsys.readouterr().err
    assert "no display" in err and "xvfb-run" in err and "Traceback" not in err
