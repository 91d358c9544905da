"""Calico's CNI log (concurrent writers, rotation) and the DEL journal."""

from __future__ import annotations

import multiprocessing
from pathlib import Path

from pycni.calico.journal import Entry, Journal
from pycni.calico.log import CalicoLog, RotatingFile


def _write_lines(args: tuple[str, int]) -> None:
    path, worker = args
    log = CalicoLog("cni-plugin", "info", RotatingFile(path, max_size_mb=1, max_count=3)).with_fields(ContainerID=f"c{worker}")
    for i in range(2000):
        log.info("line %d of worker %d %s", i, worker, "x" * 200)


def test_many_processes_write_whole_lines_and_rotate(tmp_path: Path) -> None:
    path = str(tmp_path / "cni.log")
    with multiprocessing.get_context("spawn").Pool(4) as pool:
        pool.map(_write_lines, [(path, w) for w in range(4)])
    files = sorted(tmp_path.glob("cni*.log"))
    assert 2 <= len(files) <= 4  # the current file and at most max_count backups
    for f in files:
        assert f.stat().st_size <= 1024 * 1024
        for line in f.read_text().splitlines():
            assert line.endswith('"') and "[INFO][" in line and " cni-plugin line " in line and 'ContainerID="c' in line


def test_levels_and_format(tmp_path: Path) -> None:
    log = CalicoLog("ipam", "warning", RotatingFile(str(tmp_path / "l.log")))
    log.info("hidden")
    log.with_fields(Pod="web").warning("shown %s", 1)
    (line,) = (tmp_path / "l.log").read_text().splitlines()
    assert line.split(" ", 2)[2].startswith("[WARNING][") and line.endswith('ipam shown 1 Pod="web"')


def test_journal_records_and_replays_per_datastore(tmp_path: Path) -> None:
    journal = Journal(str(tmp_path / "j"))
    journal.record(Entry("embedded:/a", "net", "c1", ["net.c1"]))
    journal.record(Entry("etcdv3:http://x:2379", "net", "c2", ["net.c2"]))
    seen: list[str] = []
    assert journal.replay("embedded:/a", lambda e: seen.append(e.container_id)) == 1
    assert seen == ["c1"] and [e.container_id for _, e in journal.entries()] == ["c2"]

    def fail(entry: Entry) -> None:
        raise RuntimeError("still down")

    try:
        journal.replay("etcdv3:http://x:2379", fail)
    except RuntimeError:
        pass
    assert [e.container_id for _, e in journal.entries()] == ["c2"]  # kept for the next try
