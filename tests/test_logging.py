"""The library's records: timestamped on stderr, tagged with the Ray node inside a task."""

from __future__ import annotations

import re
import subprocess
import sys

from tests.conftest import REPO


def _records(code: str) -> str:
    res = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    assert res.stdout == ""  # records go to stderr, never into a stage's output
    return res.stderr


def test_a_record_has_a_timestamp_and_in_a_task_its_node():
    stamp = r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}"
    task = _records(
        "import logging; from pipeline import configure_logging\n"
        "configure_logging(node='0123456789abcdef'); logging.getLogger('pipeline.runs').info('mlp seed 0: epoch 1/5')"
    )
    assert re.fullmatch(stamp + r" INFO \[node 01234567\] pipeline\.runs: mlp seed 0: epoch 1/5\n", task), task
    driver = _records(
        "import logging; from pipeline import configure_logging\n"
        "configure_logging(); logging.getLogger('stages.graphs').info('graphs: 3 written')"
    )
    assert re.fullmatch(stamp + r" INFO stages\.graphs: graphs: 3 written\n", driver), driver
    assert "node" not in driver
