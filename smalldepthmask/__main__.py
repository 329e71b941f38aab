"""`smalldepthmask <command> ...` (also `python -m smalldepthmask`): the command group."""

from __future__ import annotations

import importlib
import sys

from .errors import run_cli

# command -> (module, function, one-line help); modules are imported only when their command runs
COMMANDS = {
    "gen": ("smalldepthmask.gen", "main", "generate triplets into shards or folders"),
    "info": ("smalldepthmask.info", "main", "show which backends and optional packages are available"),
    "weights": ("smalldepthmask.depth.cli", "weights_main", "list, fetch or convert depth-teacher weights"),
    "depth": ("smalldepthmask.depth.cli", "depth_main", "run the depth teacher on your own images"),
    "stats": ("smalldepthmask.tools.stats", "main", "per-channel and placement statistics of a dataset"),
    "split": ("smalldepthmask.tools.split", "main", "reproducible train/test split (grouped by background)"),
    "preview": ("smalldepthmask.tools.preview", "main", "contact sheet PNG of triplets"),
    "verify": ("smalldepthmask.tools.verify", "main", "check every shard against the manifest"),
    "train": ("smalldepthmask.train", "main", "train the baseline mask+depth model"),
    "predict": ("smalldepthmask.predict", "main", "predict mask and depth for photos with a checkpoint"),
}


def usage() -> str:
    lines = ["usage: smalldepthmask <command> [options]", "", "commands:"]
    lines += [f"  {name:<9} {help_}" for name, (_, _, help_) in COMMANDS.items()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(usage())
        return 0
    name, rest = argv[0], argv[1:]
    if name in ("-V", "--version"):
        from . import __version__
        print(__version__)
        return 0
    if name not in COMMANDS:
        print(f"smalldepthmask: error: unknown command {name!r}\n{usage()}", file=sys.stderr)
        return 2
    module, func, _ = COMMANDS[name]
    entry = getattr(importlib.import_module(module), func)
    return run_cli(entry, rest, prog=f"smalldepthmask {name}")


if __name__ == "__main__":
    sys.exit(main())
