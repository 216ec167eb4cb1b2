"""Artifacts survive a crash: each is fsynced before it is renamed into place and its folder after,
and the temporaries a crash leaves behind are removed at start, never a finished artifact."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from _profiles_data import synthetic_profiles
from cpcnn.service.job_store import JobSpec, JobState, JobStore
from cpcnn.service.profile_store import ProfileStore, artifact_id

from cpcnn.profiles import Library, fit_sphering
from cpcnn.schemas import ImageInfo, JobStatus

JOB = "ab" * 16
HOURS_AGO = time.time() - 2 * 3600


class DiskLog:
    """Records fsyncs (by the path behind the descriptor) and renames, in order."""

    def __init__(self) -> None:
        self.events: list[tuple[str, Any]] = []

    def fsynced_before(self, index: int) -> set[str]:
        return {path for kind, path in self.events[:index] if kind == "fsync"}

    def fsynced_after(self, index: int) -> set[str]:
        return {path for kind, path in self.events[index + 1 :] if kind == "fsync"}

    def renames(self) -> list[tuple[int, Path, Path, list[str]]]:
        return [(i, *detail) for i, (kind, detail) in enumerate(self.events) if kind == "rename"]


@pytest.fixture
def disk(monkeypatch: pytest.MonkeyPatch) -> Iterator[DiskLog]:
    log = DiskLog()
    real_fsync, real_replace, real_rename = os.fsync, os.replace, os.rename

    def fsync(fd: int) -> None:
        log.events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))
        real_fsync(fd)

    def moved(real: Any) -> Any:
        def move(src: Any, dst: Any) -> None:
            source = Path(src).resolve()
            files = [str(p) for p in source.rglob("*")] + [str(source)] if source.is_dir() else [str(source)]
            real(src, dst)
            log.events.append(("rename", (source, Path(dst).resolve(), files)))
        return move

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", moved(real_replace))
    monkeypatch.setattr(os, "rename", moved(real_rename))
    yield log


def _spec() -> JobSpec:
    return JobSpec(id=JOB, model="cnn1", normalization="minmax", n_locations=3,
                   image=ImageInfo(width=64, height=64, channels=["DNA", "RNA", "ER", "AGP", "Mito"]))


def _assert_durable(disk: DiskLog, root: Path) -> int:
    """Every rename into ``root`` (not a deletion) moved only fsynced files and was followed by a
    fsync of the target's folder."""
    checked = 0
    for index, source, target, files in disk.renames():
        if not target.is_relative_to(root) or any(part.startswith(".") for part in target.relative_to(root).parts):
            continue  # a deletion (renamed to a dot-name) or a step inside a staging folder
        staged = {str(Path(f).resolve()) for f in files}
        missing = staged - disk.fsynced_before(index)
        assert not missing, f"renamed {source.name} -> {target} without fsyncing {sorted(missing)}"
        assert str(target.parent) in disk.fsynced_after(index), f"{target.parent} not fsynced after the rename"
        checked += 1
    return checked


def test_job_files_are_fsynced_around_each_rename(tmp_path: Path, disk: DiskLog) -> None:
    jobs = JobStore(tmp_path / "data")
    assert jobs.create(_spec(), np.zeros((64, 64, 5), np.uint16), np.zeros((3, 2)))
    jobs.write_state(JOB, JobState(status=JobStatus.RUNNING, attempts=1))
    jobs.write_result(JOB, np.ones((3, 4), np.float32), np.zeros((3, 2)))
    assert _assert_durable(disk, (tmp_path / "data").resolve()) == 4  # folder, state, cells, features
    assert jobs.state(JOB).attempts == 1 and jobs.load_result(JOB)[0].shape == (3, 4)


def test_profile_artifacts_are_fsynced_around_each_rename(tmp_path: Path, disk: DiskLog) -> None:
    store = ProfileStore(tmp_path / "data")
    profiles = synthetic_profiles()
    table_id = artifact_id("table", b"t")
    store.put_table(profiles, table_id, name="t.parquet", provenance={})
    sphering = fit_sphering(profiles, controls="Metadata_broad_sample=DMSO", lam=0.1)
    store.put_transform(sphering, artifact_id("transform", b"s"))
    library = Library.from_profiles(profiles, id_col="Metadata_broad_sample")
    store.put_library(library, artifact_id("library", b"l"), table_id=table_id)
    assert _assert_durable(disk, (tmp_path / "data" / "profiles").resolve()) >= 3


def _age(*paths: Path) -> None:
    for path in paths:
        os.utime(path, (HOURS_AGO, HOURS_AGO))


def test_stale_temporaries_are_removed_at_start(tmp_path: Path) -> None:
    jobs = JobStore(tmp_path / "data")
    assert jobs.create(_spec(), np.zeros((64, 64, 5), np.uint16), np.zeros((3, 2)))
    jobs.write_result(JOB, np.ones((3, 4), np.float32), np.zeros((3, 2)))
    folder = jobs.folder(JOB)
    staging = jobs.jobs_dir / f".{'cd' * 16}-x1y2"  # a create killed before its rename
    staging.mkdir()
    (staging / "image.npy").write_bytes(b"\x93NUMPY half")
    trash = jobs.jobs_dir / f".deleted-{'ef' * 16}-1-2"  # a delete killed before its rmtree
    trash.mkdir()
    (trash / "state.json").write_text("{}")
    stale = [staging, trash, folder / ".state.json-123-456", folder / ".features.npy-abc"]
    for path in stale[2:]:
        path.write_bytes(b"partial")
    fresh = folder / ".cells.npy-in-progress"  # another process is writing it right now
    fresh.write_bytes(b"partial")
    finished = [folder / n for n in ("request.json", "state.json", "image.npy", "features.npy", "cells.npy")]
    _age(*stale, *finished, folder)

    reopened = JobStore(tmp_path / "data")
    assert [p for p in stale if p.exists()] == []
    assert fresh.exists() and all(p.exists() for p in finished)
    assert reopened.ids() == [JOB] and reopened.load_result(JOB)[0].shape == (3, 4)

    store = ProfileStore(tmp_path / "data")
    table_id = artifact_id("table", b"t")
    store.put_table(synthetic_profiles(), table_id, name="t.parquet", provenance={})
    stale = [store.tables_dir / f".{table_id}-k1.parquet", store.transforms_dir / ".x-1.npz"]
    for path in stale:
        path.write_bytes(b"partial")
    staging = store.libraries_dir / ".library-abc"
    staging.mkdir()
    (staging / "features.npy").write_bytes(b"partial")
    _age(*stale, staging, store.table_path(table_id))
    reopened = ProfileStore(tmp_path / "data")
    assert [p for p in (*stale, staging) if p.exists()] == []
    assert reopened.table_public(table_id).n_rows == len(synthetic_profiles())
