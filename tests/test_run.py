"""The one subprocess wrapper: failures are one line, and nothing outlives an interrupted run."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from hardhost.core.errors import CommandFailed, ToolMissing
from hardhost.core.run import output, run


def _alive(pid: int) -> bool:
    """Running or sleeping; a zombie waiting for its reaper counts as gone."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"


def test_a_timeout_stops_the_command_and_its_children(tmp_path: Path) -> None:
    pid_file = tmp_path / "child.pid"
    with pytest.raises(CommandFailed, match="timed out after 1s"):
        run(["sh", "-c", 'sleep 60 & echo $! > "$1"; wait', "sh", str(pid_file)], timeout=1)
    child = int(pid_file.read_text())
    deadline = time.monotonic() + 5
    while _alive(child) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _alive(child), "a child of the stopped command kept running"


def test_a_failure_names_the_command_and_its_last_words() -> None:
    with pytest.raises(CommandFailed) as info:
        run(["sh", "-c", "echo first >&2; echo 'no such thing' >&2; exit 3"])
    message = str(info.value)
    assert "sh" in message and "3" in message and "no such thing" in message


def test_output_and_a_missing_tool() -> None:
    assert output(["printf", "%s", "ok"]) == "ok"
    with pytest.raises(ToolMissing, match="hardhost-no-such-tool"):
        run(["hardhost-no-such-tool"])
