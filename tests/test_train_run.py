"""A whole ``cpcnn train run`` from a run file (metrics.jsonl, curves, class table, skipped sites), the
scores against a naive computation, and the speed options (worker processes, bf16 autocast,
channels_last) on the CPU without changing what fp32 computes."""

from __future__ import annotations

import contextlib
import io
import json
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from _model_fixtures import torch_threads
from _train_index import write_index
from cpcnn.training.augment import augment_batch, augment_stored
from cpcnn.training.checkpoint import load_checkpoint
from cpcnn.training.config import make_config
from cpcnn.training.data import prepare_data
from cpcnn.training.loader import device_batch, step_seed
from cpcnn.training.loop import initial_network, make_optimizer, train
from cpcnn.training.scores import confusion, scores

from cpcnn.cli.main import main

#: torch takes seconds to import; `pytest -m "not slow"` does not import this module.
pytestmark = pytest.mark.slow


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread() -> Iterator[None]:
    with torch_threads(1):
        yield


RUN_FILE = """\
out = "run"
epochs = 1
batch_size = 8
min_cells = 6
val_max_cells = 6
threads = 1

[[sources]]
index = "a.csv"
key = "Metadata_JCP"
controls = ["DMSO"]

[[sources]]
index = "b.csv"
key = "Metadata_Gene"
controls = ["EMPTY"]
"""


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """One epoch of 3 steps on two sources, one site unreadable; -> (run folder, stdout)."""
    folder = tmp_path_factory.mktemp("run")
    write_index(
        folder,
        plates=("P1", "P2"),
        treatments={"A01": "A", "A02": "DMSO"},
        label_column="Metadata_JCP",
        name="a.csv",
    )
    write_index(
        folder,
        plates=("Q1", "Q2"),
        treatments={"A01": "A", "A02": "EMPTY", "A03": "B"},
        label_column="Metadata_Gene",
        name="b.csv",
    )
    (folder / "img" / "b_Q1_A03_s1_DNA.tif").write_bytes(b"not an image")
    (folder / "run.toml").write_text(RUN_FILE)
    out = io.StringIO()  # capsys is per test; this fixture serves the module
    with contextlib.redirect_stdout(out):
        assert main(["train", "run", "-q", "--config", str(folder / "run.toml"), "--max-steps", "3"]) == 0
    return folder / "run", out.getvalue()


def test_run_folder_holds_run_file_class_table_and_skipped_sites(run: tuple[Path, str]) -> None:
    folder, stdout = run
    assert (folder / "run.toml").read_text() == RUN_FILE
    assert json.loads((folder / "config.json").read_text())["min_cells"] == 6
    classes = (folder / "classes.csv").read_text().splitlines()
    assert classes == [
        "class,kind,cells,plates,sources,kept",
        "A,treatment,20,4,a.csv;b.csv,True",
        "B,treatment,5,1,b.csv,False",  # Q1's site was unreadable: 5 cells left, under 6
        "DMSO,control,10,2,a.csv,True",
        "EMPTY,control,10,2,b.csv,True",
    ]
    assert "class  kind" in stdout and "skipped b.csv: plate Q1 well A03 site 1" in stdout
    skipped = (folder / "skipped_sites.csv").read_text().splitlines()
    assert skipped[0] == "source,Metadata_Plate,Metadata_Well,Metadata_Site,reason"
    assert skipped[1].startswith("b.csv,Q1,A03,1,") and "DNA" in skipped[1]
    assert json.loads((folder / "classes.json").read_text()) == ["A", "DMSO", "EMPTY"]


def test_metrics_hold_scores_per_epoch(run: tuple[Path, str]) -> None:
    folder, stdout = run
    rows = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 1 and rows[0]["complete"] and rows[0]["train_crops"] == 18  # 3 classes x median 6
    row = rows[0]
    for split in ("train", "val"):
        assert 0 <= row[f"{split}_accuracy"] <= 1 and 0 <= row[f"{split}_macro_f1"] <= 1
        assert set(row[f"{split}_per_class"]) == {"A", "DMSO", "EMPTY"}
        assert set(row[f"{split}_per_class"]["A"]) == {"precision", "recall", "cells"}
    assert sum(c["cells"] for c in row["val_per_class"].values()) == row["val_cells"] == 6
    assert sum(c["cells"] for c in row["train_per_class"].values()) == 18
    assert row["val_loss"] > 0 and row["crops_per_s"] > 0 and "macro F1" in stdout
    pytest.importorskip("matplotlib")
    assert (folder / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def _naive_macro_f1(targets: list[int], predictions: list[int]) -> float:
    f1s = []
    for c in sorted(set(targets) | set(predictions)):
        tp = sum(t == c and p == c for t, p in zip(targets, predictions, strict=True))
        fp = sum(t != c and p == c for t, p in zip(targets, predictions, strict=True))
        fn = sum(t == c and p != c for t, p in zip(targets, predictions, strict=True))
        precision = tp / (tp + fp) if tp + fp else 0.0
        recall = tp / (tp + fn) if tp + fn else 0.0
        f1s.append(2 * precision * recall / (precision + recall) if precision + recall else 0.0)
    return sum(f1s) / len(f1s)


def test_macro_f1_matches_a_naive_computation() -> None:
    rng = np.random.default_rng(4)
    for _ in range(20):
        targets = rng.integers(0, 5, 40).tolist()
        predictions = rng.integers(0, 6, 40).tolist()  # class 5 only predicted, never true
        got = scores(confusion(targets, predictions, 6), [f"c{i}" for i in range(6)])
        assert got["macro_f1"] == pytest.approx(_naive_macro_f1(targets, predictions))
        assert got["accuracy"] == pytest.approx(np.mean(np.equal(targets, predictions)))
    perfect = scores(confusion([0, 1, 1], [0, 1, 1], 3), ["a", "b", "c"])
    assert perfect["macro_f1"] == 1.0 and perfect["per_class"]["c"] == {
        "precision": 0.0,
        "recall": 0.0,
        "cells": 0,
    }


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    folder = tmp_path_factory.mktemp("speed")
    index = write_index(folder, plates=("P1",), cells_per_site=4)
    config = make_config(batch_size=4, epochs=1, min_cells=1, val_max_cells=2)
    return prepare_data(index, config, cache_dir=folder / "crops"), config


def test_fp32_step_is_the_plain_sgd_step_with_or_without_workers(data, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    prepared, config = data
    train(prepared, config, tmp_path / "main", max_steps=1, log_every=0, precision="fp32", workers=0)
    train(prepared, config, tmp_path / "workers", max_steps=1, log_every=0, precision="fp32", workers=1)
    # The same step by hand: the epoch's first batch, augmented and drop-connected with step 0's seed.
    net = initial_network(len(prepared.classes), config).train()
    optimizer = make_optimizer(net, config)
    cells = prepared.epoch_cells(0, seed=config.seed)[: config.batch_size]
    seed = step_seed(config.seed, 0)
    crops = prepared.cache.augmented(cells, generator=torch.Generator().manual_seed(seed))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        loss = torch.nn.functional.cross_entropy(net(crops), torch.from_numpy(prepared.labels[cells]))
        loss.backward()
        optimizer.step()
    for name in ("main", "workers"):
        got = load_checkpoint(tmp_path / name / "last.pt").state_dict
        for key, value in net.state_dict().items():
            torch.testing.assert_close(got[key], value, rtol=0, atol=0, msg=f"{name}: {key}")


def test_augmenting_stored_crops_equals_augmenting_converted_ones(data) -> None:  # type: ignore[no-untyped-def]
    prepared, _ = data
    cells = np.array([3, 0, 2, 1, 3])
    for seed in range(4):
        expected = augment_batch(prepared.cache.batch(cells), generator=torch.Generator().manual_seed(seed))
        got = prepared.cache.augmented(cells, generator=torch.Generator().manual_seed(seed))
        torch.testing.assert_close(got, expected, rtol=0, atol=2e-6)
    half = np.random.default_rng(0).random((3, 128, 128, 5)).astype(np.float16)
    converted = torch.from_numpy(half.astype(np.float32)).permute(0, 3, 1, 2)
    torch.testing.assert_close(
        augment_stored(half, scale=1.0, generator=torch.Generator().manual_seed(1)),
        augment_batch(converted, generator=torch.Generator().manual_seed(1)),
        rtol=0,
        atol=2e-6,
    )


def test_device_augmentation_matches_the_cpu_path(data) -> None:  # type: ignore[no-untyped-def]
    prepared, _ = data
    cells = np.array([3, 0, 2, 1, 3])
    for seed in range(4):
        expected = prepared.cache.augmented(cells, generator=torch.Generator().manual_seed(seed))
        stored = prepared.cache.stored(cells)
        got = device_batch(
            stored,
            torch.device("cpu"),
            scale=prepared.cache.scale,
            generator=torch.Generator().manual_seed(seed),
        )
        torch.testing.assert_close(got, expected, rtol=0, atol=2e-6)
    plain = device_batch(
        prepared.cache.stored(cells), torch.device("cpu"), scale=prepared.cache.scale, generator=None
    )
    torch.testing.assert_close(plain, prepared.cache.batch(cells), rtol=0, atol=0)


def test_bf16_autocast_and_channels_last_run_on_the_cpu(data, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    prepared, config = data
    result = train(
        prepared,
        config,
        tmp_path / "bf16",
        max_steps=1,
        log_every=0,
        precision="bf16",
        channels_last=True,
        device_augment=True,  # the CUDA data path: 8-bit crops converted and augmented on the device
    )
    row = result.metrics[0]
    assert np.isfinite(row["train_loss"]) and np.isfinite(row["val_loss"])
    checkpoint = load_checkpoint(tmp_path / "bf16" / "last.pt")
    assert all(v.dtype in (torch.float32, torch.int64) for v in checkpoint.state_dict.values())
    start = initial_network(len(prepared.classes), config).state_dict()
    assert not torch.equal(checkpoint.state_dict["stem_conv.weight"], start["stem_conv.weight"])
    checkpoint.build()  # loads strictly into a contiguous network


def test_curves_without_matplotlib_warn_once(
    run: tuple[Path, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    from cpcnn.training.curves import plot_curves

    folder, _ = run
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib raises ImportError
    assert plot_curves(folder / "metrics.jsonl", tmp_path) is None
    assert not (tmp_path / "curves.png").exists()
    assert [r.message for r in caplog.records] == [
        "no learning-curve plot: matplotlib is missing (install the 'plots' extra)"
    ]


def test_a_second_run_into_the_folder_keeps_its_run_file(run: tuple[Path, str]) -> None:
    folder, _ = run
    other = folder.parent / "other.toml"
    other.write_text(RUN_FILE.replace("epochs = 1", "epochs = 2"))
    with contextlib.redirect_stdout(io.StringIO()):
        assert main(["train", "run", "-q", "--config", str(other)]) == 1  # the folder holds a run
    assert (folder / "run.toml").read_text() == RUN_FILE
