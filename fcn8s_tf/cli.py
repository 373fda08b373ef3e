"""How every command-line program of the project starts, fails and stops.

    if __name__ == "__main__":
        cli.run(define_flags, main)

  - Flags are defined by the program's `define_flags()`, which `run` calls: importing a CLI module
    defines no flag, so tests and other programs import them freely.
  - An error the user can fix ends the program with one line, `<prog>: error: <message>`, and exit
    status 1 (`fail`): no traceback.
  - A stop asked by a signal says what it left behind, with exit status 128 + the signal number, as
    a shell reports a signal (`stopped`).
"""

import sys
from typing import Callable, NoReturn, Optional, Sequence

from absl import app


def run(define_flags: Callable[[], None], main: Callable[[Sequence[str]], Optional[int]]) -> None:
    """Defines the program's flags, then runs `main` under absl (flag parsing, --help, logging)."""
    define_flags()
    app.run(main)


def no_positional_arguments(argv: Sequence[str]) -> None:
    """A usage error (absl prints the usage, exit 1) for arguments a program does not take."""
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {list(argv[1:])}")


def fail(prog: str, message: object) -> NoReturn:
    """Ends the program with `<prog>: error: <message>` on stderr and exit status 1."""
    print(f"{prog}: error: {message}", file=sys.stderr)
    raise SystemExit(1)


def stopped(prog: str, message: object, exit_code: int) -> NoReturn:
    """Ends a program a signal stopped: `<prog>: <message>` on stderr, exit status 128 + signal."""
    print(f"{prog}: {message}", file=sys.stderr)
    raise SystemExit(exit_code)
