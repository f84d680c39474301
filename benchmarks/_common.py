"""Helpers shared by the benchmark scripts."""


def rss_mb() -> float:
    """This process's resident memory now, in MB (Linux)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def data_default(sub: str = ""):
    """The default ``--data``: ``$DATA`` (the folder of public data sets, docs/data.md), or
    ``sub`` under it; None when ``$DATA`` is not set (then ``--data`` must be given)."""
    import os
    from pathlib import Path

    root = os.environ.get("DATA")
    return (Path(root) / sub if sub else Path(root)) if root else None
