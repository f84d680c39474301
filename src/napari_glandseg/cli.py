"""The ``glandseg`` command line.

Bad arguments and bad input exit with code 2 and one line on stderr, never a traceback.

Examples::

    glandseg models                         # list bundled and user models with their cards
    glandseg models show glands-he
    glandseg models import my_unet.safetensors --name my-unet
    glandseg models import weights.pt --card card.json
    glandseg gui --sample glas              # napari with the plugin docked on sample data
"""

from __future__ import annotations

import argparse
import sys

from .errors import GlandsegError

EXIT_BAD_INPUT = 2


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one clear line, exit code 2 (argparse's own convention)
        self.exit(EXIT_BAD_INPUT, f"{self.prog}: error: {message}\n")


def _models(args) -> int:
    from . import models

    if args.action in (None, "list"):
        entries = models.list_models()
        if not entries:
            print(f"no models yet; import one with: glandseg models import FILE\n"
                  f"(user folder: {models.user_dir()})")
            return 0
        width = max(len(e.name) for e in entries)
        for e in entries:
            c = e.card
            arch = models.Architecture(c.architecture).label
            print(f"{e.name:<{width}}  {e.source:<7}  {arch:<12}  "
                  f"{'/'.join(c.class_names)}  {c.description}")
        return 0
    if args.action == "show":
        _need(args, "name", "glandseg models show NAME")
        entry = models.find_model(args.name)
        print(entry.card.summary())
        print(f"file: {entry.path} ({entry.source})")
        return 0
    if args.action == "import":
        _need(args, "name", "glandseg models import FILE [--as NAME]")
        card = None
        if args.card:
            from pathlib import Path

            card = models.ModelCard.from_json(Path(args.card).read_text())
        entry = models.import_model(args.name, name=args.as_name, card=card,
                                    overwrite=args.overwrite)
        print(f"imported {entry.name} -> {entry.path}")
        return 0
    if args.action == "export":
        _need(args, "name", "glandseg models export NAME --to PATH")
        if not args.to:
            raise GlandsegError("export needs --to PATH")
        print(models.export_model(args.name, args.to, overwrite=args.overwrite))
        return 0
    if args.action == "delete":
        _need(args, "name", "glandseg models delete NAME --yes")
        if not args.yes:
            raise GlandsegError(f"deleting {args.name!r} cannot be undone; add --yes to confirm")
        models.delete_model(args.name)
        print(f"deleted {args.name}")
        return 0
    raise GlandsegError(f"unknown action {args.action!r}")  # pragma: no cover - argparse checks


def _need(args, attr: str, usage: str) -> None:
    if not getattr(args, attr):
        raise GlandsegError(f"usage: {usage}")


def _gui(args) -> int:  # pragma: no cover - opens a window; exercised by tests/test_gui_cmd.py
    from .gui import open_viewer

    viewer = open_viewer(sample=args.sample, files=args.files)
    if args.screenshot:
        viewer.window.screenshot(args.screenshot, canvas_only=False)
        viewer.close()
        return 0
    import napari

    napari.run()
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog="glandseg",
        description="Deep-learning segmentation of glands, nuclei, cells and membranes.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__.split("Examples::", 1)[1],
    )
    from . import __version__

    p.add_argument("--version", action="version", version=f"napari-glandseg {__version__}")
    sub = p.add_subparsers(dest="command", parser_class=_Parser, metavar="COMMAND")

    m = sub.add_parser(
        "models", help="list, show, import, export or delete models",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="examples:\n  glandseg models\n  glandseg models show glands-he\n"
               "  glandseg models import net.safetensors --as my-net\n"
               "  glandseg models import net.pt --card card.json\n"
               "  glandseg models export my-net --to ./exports/\n"
               "  glandseg models delete my-net --yes",
    )
    m.add_argument("action", nargs="?", choices=["list", "show", "import", "export", "delete"])
    m.add_argument("name", nargs="?", help="model name (or file, for import)")
    m.add_argument("--as", dest="as_name", help="store name for an imported model")
    m.add_argument("--card", help="JSON model card for a .pt/.pth state dict")
    m.add_argument("--to", help="destination file or folder for export")
    m.add_argument("--overwrite", action="store_true", help="replace an existing file/model")
    m.add_argument("--yes", action="store_true", help="confirm deletion")
    m.set_defaults(func=_models)

    g = sub.add_parser(
        "gui", help="open napari with the plugin docked",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="examples:\n  glandseg gui --sample glas\n  glandseg gui slide.svs\n"
               "  glandseg gui --sample monuseg --screenshot shot.png   # no window kept open",
    )
    g.add_argument("files", nargs="*", help="images or masks to open")
    g.add_argument("--sample", choices=["glas", "monuseg", "none"], default="glas",
                   help="bundled sample data to open (default: glas)")
    g.add_argument("--screenshot", metavar="PNG", help="save a screenshot of the window and exit")
    g.set_defaults(func=_gui)
    return p


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return EXIT_BAD_INPUT
    try:
        return args.func(args)
    except (GlandsegError, FileNotFoundError) as exc:
        print(f"glandseg: error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print("glandseg: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
