"""Bad input stops with one clear line, never a traceback from deep inside a library."""
from __future__ import annotations

import sys
from typing import Callable

from .config.load import ConfigError
from .data.corpus import CorpusError
from .data.indexed import DatasetError
from .data.renderer import RenderOverflowError
from .data.tokenizer import TokenizerError


class CheckpointError(ValueError):
    pass


USER_ERRORS = (ConfigError, CorpusError, DatasetError, TokenizerError, RenderOverflowError,
               CheckpointError, FileNotFoundError)


def run_cli(main: Callable[[], None]) -> None:
    """Run a tool's main(); a user error prints 'error: ...' on stderr and exits with code 2."""
    try:
        main()
    except USER_ERRORS as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
