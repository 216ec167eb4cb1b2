"""Training package: index reading, crop cache, splits, class balancing, augmentations, ImageNet stem,
the train loop (end to end through the CLI, resume, import into the model store) and CLI errors."""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pyarrow.csv as pa_csv
import pyarrow.parquet as pq
import pytest
import torch
from _model_fixtures import keras_tensors, seeded_net, torch_threads, write_keras_h5
from _train_index import write_index
from cpcnn.model_export.importer import import_weights
from cpcnn.training.augment import Augmentation, augment_batch, resized_crops
from cpcnn.training.checkpoint import load_checkpoint
from cpcnn.training.config import TrainConfig, make_config
from cpcnn.training.data import balanced_epoch, load_or_build_cache, prepare_data, read_index, split_cells
from cpcnn.training.loop import initial_network, make_optimizer, train
from cpcnn.training.net import EfficientNetB0
from cpcnn.training.stem import adapt_stem, load_imagenet

from cpcnn._types import CHANNELS
from cpcnn.cli.main import main
from cpcnn.crops import crop_cells
from cpcnn.errors import InputError
from cpcnn.io.images import read_site
from cpcnn.locations import read_locations
from cpcnn.model_store import ModelStore

#: torch takes seconds to import; `pytest -m "not slow"` does not import this module.
pytestmark = pytest.mark.slow


def train_cli(argv: list[str]) -> int:
    """``cpcnn train ARGV`` in this process."""
    return main(["train", *argv])


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread() -> Iterator[None]:
    with torch_threads(1):
        yield


@pytest.fixture(scope="module")
def index(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_index(tmp_path_factory.mktemp("data"))


def test_read_index_resolves_paths(index: Path) -> None:
    sites = read_index(index, label="Metadata_Treatment", channels=CHANNELS)
    assert [(s.plate, s.well, s.label) for s in sites] == [
        ("P1", "A01", "A"),
        ("P1", "A02", "B"),
        ("P2", "A01", "A"),
        ("P2", "A02", "B"),
    ]
    assert sites[0].images["Mito"] == index.parent / "img" / "sites_P1_A01_s1_Mito.tif"
    assert all(p.is_file() for s in sites for p in (*s.images.values(), s.locations))
    parquet = index.with_name("sites.parquet")
    pq.write_table(pa_csv.read_csv(index), parquet)  # Metadata_Site becomes an integer column there
    assert read_index(parquet, label="Metadata_Treatment", channels=CHANNELS) == sites


def test_crop_cache_matches_inference_crops(index: Path, tmp_path: Path) -> None:
    sites = read_index(index, label="Metadata_Treatment", channels=CHANNELS)
    cache = load_or_build_cache(sites, tmp_path / "c8", channels=CHANNELS)
    assert cache.crops.shape == (20, 128, 128, 5) and cache.crops.dtype == np.uint8
    assert cache.site_of_cell.tolist() == [0] * 5 + [1] * 5 + [2] * 5 + [3] * 5
    site = sites[1]
    expected = crop_cells(read_site(site.images), read_locations(site.locations))
    got = cache.batch(np.arange(5, 10))
    assert got.shape == (5, 5, 128, 128) and got.dtype == torch.float32
    np.testing.assert_allclose(got.permute(0, 2, 3, 1).numpy(), expected, atol=0.5 / 255 + 1e-6)
    half = load_or_build_cache(sites, tmp_path / "c16", channels=CHANNELS, dtype="float16")
    assert half.crops.dtype == np.float16
    np.testing.assert_allclose(half.batch(np.arange(5, 10)).permute(0, 2, 3, 1).numpy(), expected, atol=1e-3)
    stamp = (tmp_path / "c8" / "crops.npy").stat().st_mtime_ns
    again = load_or_build_cache(sites, tmp_path / "c8", channels=CHANNELS)
    assert (tmp_path / "c8" / "crops.npy").stat().st_mtime_ns == stamp and len(again) == 20


def test_balanced_epoch_draws_the_median_count() -> None:
    labels = np.repeat(np.arange(4), [2, 5, 9, 30])
    rng = np.random.default_rng(0)
    epoch = balanced_epoch(labels, 4, rng=rng)
    assert np.bincount(labels[epoch]).tolist() == [7, 7, 7, 7]  # median of 2, 5, 9, 30 = 7
    assert set(np.flatnonzero(labels == 0)) <= set(epoch.tolist())  # small classes keep every cell
    big = epoch[labels[epoch] == 3]
    assert len(set(big.tolist())) == 7  # big classes: without replacement
    again = balanced_epoch(labels, 4, rng=np.random.default_rng(0))
    np.testing.assert_array_equal(epoch, again)
    with pytest.raises(InputError, match="no training cells"):
        balanced_epoch(labels, 5, rng=rng)


def test_split_cells_per_well() -> None:
    wells = np.repeat(np.arange(3), [10, 5, 1])
    train_cells, val_cells = split_cells(wells, fraction=0.6, rng=np.random.default_rng(1))
    assert np.bincount(wells[train_cells], minlength=3).tolist() == [6, 3, 1]
    assert sorted([*train_cells, *val_cells]) == list(range(16))


def test_prepare_data_splits(index: Path, tmp_path: Path) -> None:
    by_cells = prepare_data(index, TrainConfig(seed=3, min_cells=1), cache_dir=tmp_path / "crops")
    assert by_cells.classes == ("A", "B") and by_cells.train.size == 12 and by_cells.val.size == 8
    by_plates = prepare_data(
        index, make_config(split="plates", holdout_plates=("P2",), min_cells=1), cache_dir=tmp_path / "crops"
    )
    assert by_plates.cache.site_of_cell[by_plates.val].tolist() == [2] * 5 + [3] * 5
    epoch = by_cells.epoch_cells(0, seed=3)
    assert np.bincount(by_cells.labels[epoch]).tolist() == [6, 6]
    with pytest.raises(InputError, match="Q9 not in the index"):
        prepare_data(index, make_config(split="plates", holdout_plates=("Q9",), min_cells=1), cache_dir=tmp_path / "crops")


def test_augmentations_are_seeded_and_keep_shape() -> None:
    crops = torch.rand(6, 5, 128, 128, generator=torch.Generator().manual_seed(0))
    first = augment_batch(crops, generator=torch.Generator().manual_seed(5))
    second = augment_batch(crops, generator=torch.Generator().manual_seed(5))
    other = augment_batch(crops, generator=torch.Generator().manual_seed(6))
    assert first.shape == crops.shape and first.dtype == torch.float32
    assert torch.equal(first, second) and not torch.equal(first, other)
    assert not torch.equal(crops, first)  # input untouched, output changed
    geometric = Augmentation(crop_p=0.0, brightness=0.0, contrast=(1.0, 1.0))
    moved = augment_batch(crops, generator=torch.Generator().manual_seed(1), spec=geometric)
    torch.testing.assert_close(moved.sum(dim=(2, 3)), crops.sum(dim=(2, 3)))  # flips/rotations permute pixels


def test_resized_crop_identity_and_zoom() -> None:
    crops = torch.arange(2 * 16 * 16, dtype=torch.float32).reshape(2, 1, 16, 16)
    same = resized_crops(crops, torch.zeros(2, 2), torch.full((2,), 16.0))
    torch.testing.assert_close(same, crops)
    half = resized_crops(crops[:1], torch.tensor([[4.0, 2.0]]), torch.tensor([8.0]))
    expected = torch.nn.functional.interpolate(
        crops[:1, :, 2:10, 4:12], size=16, mode="bilinear", align_corners=False
    )
    torch.testing.assert_close(half, expected)


def test_imagenet_stem_from_keras(tmp_path: Path) -> None:
    source = seeded_net(seed=3, num_classes=0, in_chans=3)
    tensors = keras_tensors(source)
    tensors["predictions/kernel"] = np.zeros((1280, 1000), np.float32)  # an ImageNet head is skipped
    tensors["predictions/bias"] = np.zeros(1000, np.float32)
    path = write_keras_h5(tmp_path / "top.h5", tensors)
    net = EfficientNetB0(in_chans=5, num_classes=4)
    notes = load_imagenet(net, path)
    assert any("scaled by 3/5" in line for line in notes) and any("predictions" in line for line in notes)
    stem = source.stem_conv.weight.detach()
    torch.testing.assert_close(net.stem_conv.weight.detach(), stem[:, [0, 1, 2, 0, 1]] * 0.6)
    torch.testing.assert_close(net.top_bn.running_var, source.top_bn.running_var)
    torch.testing.assert_close(net.blocks["block6a"].dwconv.weight, source.blocks["block6a"].dwconv.weight)
    torch.save(source.state_dict(), tmp_path / "rgb.pt")
    from_torch = EfficientNetB0(in_chans=5, num_classes=4)
    load_imagenet(from_torch, tmp_path / "rgb.pt", rescale=False)
    torch.testing.assert_close(from_torch.stem_conv.weight.detach(), stem[:, [0, 1, 2, 0, 1]])
    # Other names (timm's), same order: matched by position and shape.
    renamed = {f"t{i}": v for i, (k, v) in enumerate(source.state_dict().items()) if "num_batches" not in k}
    torch.save(renamed, tmp_path / "timm.pt")
    by_position = EfficientNetB0(in_chans=5, num_classes=4)
    assert any("by position" in line for line in load_imagenet(by_position, tmp_path / "timm.pt"))
    torch.testing.assert_close(
        by_position.blocks["block7a"].project_bn.running_mean,
        source.blocks["block7a"].project_bn.running_mean,
    )
    assert adapt_stem(torch.ones(2, 3, 3, 3), 5).shape == (2, 5, 3, 3)


def test_optimizer_decays_kernels_only() -> None:
    net = EfficientNetB0(in_chans=5, num_classes=3)
    decayed, plain = make_optimizer(net, TrainConfig()).param_groups
    assert decayed["weight_decay"] == pytest.approx(2e-5) and plain["weight_decay"] == 0.0
    assert decayed["nesterov"] and decayed["momentum"] == 0.9 and decayed["lr"] == 0.005
    ids = {id(p) for p in decayed["params"]}
    assert id(net.stem_conv.weight) in ids and id(net.class_prob.weight) in ids  # type: ignore[union-attr]
    assert id(net.blocks["block2a"].dwconv.weight) not in ids and id(net.stem_bn.weight) not in ids


def test_training_lowers_loss_on_a_repeated_batch(index: Path, tmp_path: Path) -> None:
    config = make_config(lr=0.05, augment=False, batch_size=4, min_cells=1)
    data = prepare_data(index, config, cache_dir=tmp_path / "crops")
    net = initial_network(2, config).train()
    optimizer = make_optimizer(net, config)
    cells = np.concatenate([data.train[data.labels[data.train] == c][:2] for c in (0, 1)])
    crops, targets = data.cache.batch(cells), torch.from_numpy(data.labels[cells])
    losses = []
    for _ in range(6):
        loss = torch.nn.functional.cross_entropy(net(crops), targets)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
    assert losses[-1] < losses[0]


def test_train_cli_end_to_end_resume_and_import(index: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    common = [
        "run",
        "--index",
        str(index),
        "--out",
        str(out),
        "--batch-size",
        "4",
        "--epochs",
        "2",
        "--threads",
        "1",
        "--cache-dir",
        str(tmp_path / "crops"),
        "--val-max-cells",
        "4",
        "--min-cells",
        "1",
    ]
    assert train_cli([*common, "--max-steps", "2"]) == 0
    last = out / "last.pt"
    checkpoint = load_checkpoint(last)
    assert checkpoint.num_classes == 2 and checkpoint.config["classes"] == ["A", "B"]
    assert checkpoint.config["progress"] == {"epoch": 0, "epoch_step": 2, "step": 2}
    assert json.loads((out / "config.json").read_text())["lr"] == 0.005
    assert train_cli(common) == 1  # a run is there: refuse to overwrite it
    assert train_cli([*common, "--resume", str(last), "--max-steps", "5"]) == 0
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [(r["epoch"], r["step"], r["complete"]) for r in rows] == [
        (1, 2, False),
        (1, 3, True),
        (2, 5, False),
    ]
    assert rows[1]["checkpoint"] == "checkpoint_0001.pt" and rows[1]["val_cells"] == 4
    assert (out / "checkpoint_0001.pt").is_file() and (out / "last.state.pt").is_file()
    assert load_checkpoint(last).config["progress"]["step"] == 5
    stored = import_weights(last, name="trained", store=ModelStore(tmp_path / "models"))
    assert stored.manifest.feature_size == 672 and stored.manifest.normalization == "minmax"


def test_resume_reproduces_an_uninterrupted_run(index: Path, tmp_path: Path) -> None:
    config = make_config(batch_size=3, epochs=1, min_cells=1)
    data = prepare_data(index, config, cache_dir=tmp_path / "crops")
    straight = train(data, config, tmp_path / "a", max_steps=2, log_every=0)
    train(data, config, tmp_path / "b", max_steps=1, log_every=0)
    resumed = train(data, config, tmp_path / "b", resume=tmp_path / "b" / "last.pt", max_steps=2, log_every=0)
    assert straight.progress == resumed.progress
    expected = load_checkpoint(tmp_path / "a" / "last.pt").state_dict
    got = load_checkpoint(tmp_path / "b" / "last.pt").state_dict
    assert got.keys() == expected.keys()
    for key, value in expected.items():
        torch.testing.assert_close(got[key], value, rtol=0, atol=0)


def test_init_command_writes_an_importable_checkpoint(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert train_cli(["init", "--out", str(tmp_path / "x.pt"), "--seed", "1", "--num-classes", "7"]) == 0
    checkpoint = load_checkpoint(tmp_path / "x.pt")
    assert checkpoint.num_classes == 7 and checkpoint.config["init"] == "random"
    assert "random init" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("missing_column", "lacks column(s) Mito"),
        ("missing_file", "do not exist, first:"),
        ("one_class", "at least 2"),
        ("empty_class", "names 1 class with at least 1 cells"),
        ("bad_setting", "invalid training setting lr"),
    ],
)
def test_cli_errors_are_one_line(
    case: str, message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["--lr", "-1"] if case == "bad_setting" else ["--min-cells", "1"]
    if case == "one_class":
        index = write_index(tmp_path, plates=("P1",), treatments={"A01": "A"}, cells_per_site=2)
    else:
        index = write_index(
            tmp_path, plates=("P1",), cells_per_site=2, empty_label="B" if case == "empty_class" else None
        )
    if case == "missing_column":
        lines = index.read_text().splitlines()
        index.write_text("\n".join(line.rsplit(",", 1)[0] for line in lines) + "\n")  # drop the last column
    if case == "missing_file":
        (tmp_path / "img" / "sites_P1_A02_s1_ER.tif").unlink()
    code = train_cli(["run", "-q", "--index", str(index), "--out", str(tmp_path / "run"), *args])
    err = capsys.readouterr().err.strip()
    assert code == 1 and len(err.splitlines()) == 1 and message in err, err


def test_device_choice() -> None:
    from cpcnn.training.loop import pick_device

    from cpcnn.errors import InputError

    assert pick_device("cpu").type == "cpu"
    if torch.cuda.is_available():
        assert pick_device("auto").type == "cuda"
    else:
        assert pick_device("auto").type == "cpu"
        with pytest.raises(InputError, match="no CUDA device"):
            pick_device("cuda")


def test_bad_cell_beyond_a_chunk_is_reported_by_its_row_in_the_site(tmp_path: Path) -> None:
    index = write_index(tmp_path, plates=("P1",))
    sites = read_index(index, label="Metadata_Treatment", channels=CHANNELS)
    centers = np.full((300, 2), 100.0)
    centers[299] = (5000.0, 5000.0)
    with sites[1].locations.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["Nuclei_Location_Center_X", "Nuclei_Location_Center_Y"])
        writer.writerows(centers.tolist())
    with pytest.raises(InputError, match=r"plate P1 well A02 site 1: .* row 299 \(x=5000, y=5000\)"):
        load_or_build_cache(sites, tmp_path / "cache", channels=CHANNELS)
