"""User-facing error types and the CLI wrapper. Deliberately light (no torch/megatron import)
so that a bad flag or file is reported in a second, before any heavy import."""
from __future__ import annotations

import sys
from typing import Callable


class UserError(ValueError):
    """Bad input: the message names the file or field, what was expected and what to do."""


class ConfigError(UserError):
    """A configuration that cannot work."""


class CorpusError(UserError):
    """A raw text corpus that cannot be read."""


class TokenizerError(UserError):
    """A tokenizer file that is missing or not what the run expects."""


class DatasetError(UserError):
    """A preprocessed dataset that is missing, corrupt or mismatched."""


class RenderOverflowError(UserError):
    """The text does not fit the image at the allowed font sizes."""


class CheckpointError(UserError):
    """A checkpoint directory that cannot be read or written."""


class TrainingError(UserError):
    """A run that ended without training (most of its steps skipped as non-finite)."""


def run_cli(main: Callable[[], None]) -> None:
    """Run a tool's main(); a user error prints 'error: ...' on stderr and exits with code 2. So
    does an OSError (a file where a directory should be, no permission, a full disk): the
    operating system's reason and the path it names, never a traceback."""
    try:
        main()
    except (UserError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
    except OSError as exc:
        print(f"error: {exc} (the file system refused: check the path, its permissions and the free "
              f"space)", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt as exc:      # a second Ctrl-C in training, or Ctrl-C in a tool
        print(f"interrupted{': ' + str(exc) if str(exc) else ''}", file=sys.stderr)
        sys.exit(130)
