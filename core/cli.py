"""The one rule every command line follows: a ``UserError`` is printed as one ``error: ...`` line with exit code 2;
a diverged run (``NonFiniteLossError``) exits 1 the same way; anything else is a bug and keeps its traceback
(``LINREG_DEBUG=1`` shows the traceback of user errors too).

    @command                      # main(argv) now returns 2 (and prints one line) on a UserError
    def main(argv=None) -> int: ...

    if __name__ == "__main__":
        run_cli(main)             # sys.exit(main()), with the same rule for a main that is not decorated
"""
from __future__ import annotations

import functools
import os
import sys
from collections.abc import Callable

from core.errors import NonFiniteLossError, UserError, one_line


def command(main: Callable[..., int | None]) -> Callable[..., int]:
    @functools.wraps(main)
    def wrapper(*args, **kwargs) -> int:
        try:
            return main(*args, **kwargs) or 0
        except (UserError, NonFiniteLossError) as e:
            if os.environ.get("LINREG_DEBUG"):
                raise
            print(f"error: {one_line(e)}", file=sys.stderr, flush=True)
            return 2 if isinstance(e, UserError) else 1

    return wrapper


def run_cli(main: Callable[[], int | None]) -> None:
    sys.exit(command(main)())
