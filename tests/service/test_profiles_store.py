"""The profile artifact store on its own, and the profile operations in the committed contract."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from _profiles_data import synthetic_profiles
from _servers import REPO_ROOT
from cpcnn.service.profile_store import ProfileStore, artifact_id

from cpcnn.profiles import Library

ID, MOA = "Metadata_broad_sample", "Metadata_moa"


def test_store_keeps_few_libraries_open_and_cleans_crashed_writes(tmp_path: Path) -> None:
    store = ProfileStore(tmp_path, open_libraries=1)
    table = synthetic_profiles()
    ids = []
    for columns in ([], [MOA]):
        library = Library.from_profiles(table, id_col=ID, annotations=columns)
        ids.append(store.put_library(library, artifact_id("library", *columns), table_id="t").id)
        store.library(ids[-1])
    assert store.open_libraries() == [ids[1]]
    assert sorted(p.name for p in store.root.rglob(".*")) == []
    stale = store.tables_dir / ".crashed-upload.parquet"
    stale.write_bytes(b"half")
    fresh = store.tables_dir / ".in-flight.parquet"
    fresh.write_bytes(b"half")
    os.utime(stale, (time.time() - 7200, time.time() - 7200))
    ProfileStore(tmp_path)
    assert not stale.exists() and fresh.exists()


def test_contract_lists_the_profile_operations() -> None:
    schema = json.loads((REPO_ROOT / "openapi" / "openapi.json").read_text())
    operations = {op["operationId"] for path in schema["paths"].values() for op in path.values()}
    assert {
        "tables-upload_table",
        "tables-list_tables",
        "tables-get_table",
        "tables-get_table_data",
        "tables-delete_table",
        "transforms-create_transform",
        "transforms-list_transforms",
        "transforms-get_transform",
        "transforms-delete_transform",
        "transforms-apply_transform",
        "libraries-create_library",
        "libraries-list_libraries",
        "libraries-get_library",
        "libraries-delete_library",
        "libraries-match_library",
        "evaluation-evaluate_table",
    } <= operations
    upload = schema["paths"]["/v1/tables"]["post"]["responses"]
    assert {"201", "413", "415", "422"} <= set(upload)
