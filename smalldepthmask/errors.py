"""Errors that reach the user as one line and exit code 2 (bad input, bad flag, missing backend)."""

from __future__ import annotations

import sys


class UsageError(Exception):
    """A problem the user can fix: printed as one line (or one line per item), exit code 2, no traceback."""

    exit_code = 2

    def __init__(self, message: str, details: list[str] | None = None):
        super().__init__(message)
        self.message = message
        self.details = list(details or [])

    def report(self, prog: str = "smalldepthmask") -> None:
        print(f"{prog}: error: {self.message}", file=sys.stderr)
        for line in self.details:
            print(f"  {line}", file=sys.stderr)


class BadInputError(UsageError):
    """One input file that cannot be used; `path` and `reason` go on one line."""

    def __init__(self, path, reason: str):
        self.path = path
        self.reason = reason
        super().__init__(f"{path}: {reason}")


def run_cli(main, argv=None, prog: str = "smalldepthmask") -> int:
    """Call `main(argv)`, turning UsageError into its one-line report and exit code 2."""
    try:
        return int(main(argv) or 0)
    except UsageError as e:
        e.report(prog)
        return e.exit_code
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130
