"""``conveyor serve`` stopped by SIGTERM shuts down: jobs, transfer workers, connections."""

from __future__ import annotations

from pathlib import Path

from tests.support.server import running_server


def test_a_terminated_server_closes_its_runtime(tmp_path: Path) -> None:
    """uvicorn raises the SIGTERM that stopped it again once it has shut down, which ends
    the process at once: the runtime is closed by the app's shutdown, before that."""
    data = tmp_path / "data"
    with running_server(data, mirror_processes="1"):
        pass
    [log] = data.glob("serve-*.log")
    assert "stopped: running jobs finished, workers and connections closed" in log.read_text()
