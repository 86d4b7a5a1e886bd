"""The slow tier's rule (tests/conftest.py): a test outside it that starts a Python process or a
launcher fails with the rule's name; other programs are allowed."""
import subprocess
import sys

import pytest

from tests.conftest import _starts_a_process


def test_a_fast_test_cannot_start_a_python_process():
    with pytest.raises(AssertionError, match="is not marked slow"):
        subprocess.run([sys.executable, "-c", "pass"], check=True)
    with pytest.raises(AssertionError, match="is not marked slow"):
        subprocess.run(["bash", "examples/tiny_cpu/run.sh"], check=True)


def test_which_commands_count_as_processes():
    assert _starts_a_process([sys.executable, "-m", "pytest"])
    assert _starts_a_process(["torchrun", "--nproc_per_node", "2", "x.py"])
    assert _starts_a_process(["/usr/bin/python3", "-c", "pass"])
    assert _starts_a_process(["./launch.sh"]) and _starts_a_process("deepspeed")
    assert not _starts_a_process(["git", "status"]) and not _starts_a_process(["ninja", "--version"])


@pytest.mark.slow
def test_a_slow_test_may():
    assert subprocess.run([sys.executable, "-c", "pass"]).returncode == 0
