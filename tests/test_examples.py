"""The examples run as written (under the test display)."""

import runpy
from pathlib import Path

EXAMPLES = Path(__file__).parent.parent / "examples"


def test_scripted_session(fg_model_factory, capsys):
    fg_model_factory("all-glands", postprocess={"split": "none"})  # everything is gland
    ns = runpy.run_path(str(EXAMPLES / "scripted_session.py"), run_name="not_main")
    metrics = ns["main"](["--model", "all-glands"])
    out = capsys.readouterr().out
    assert "1 objects from all-glands" in out and "object_f1" in out
    # one object covering the whole crop: every pixel of truth is found, precision suffers
    assert metrics["recall"] == 1.0 and metrics["precision"] < 1.0
