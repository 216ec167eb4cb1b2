"""The non-learned baseline: statistics checked on crops whose values are known by hand, and the site
path checked against crops cut independently by ``crop_cells``."""

from __future__ import annotations

import numpy as np
import pytest

from cpcnn.baseline import STATISTICS, baseline_cells, crop_statistics, feature_names, site_statistics
from cpcnn.crops import crop_cells
from cpcnn.errors import InputError
from cpcnn.locations import Locations


def _by_name(values: np.ndarray, channels: tuple[str, ...]) -> dict[str, float]:
    return dict(zip(feature_names(channels), values.tolist(), strict=True))


def test_checkerboard_and_flat_channels_have_their_hand_computed_statistics() -> None:
    size = 16
    checker = (np.indices((size, size)).sum(axis=0) % 2).astype(np.float32)
    crops = np.zeros((1, size, size, 2), np.float32)
    crops[0, :, :, 0] = checker
    crops[0, :, :, 1] = 0.25
    stats = _by_name(crop_statistics(crops)[0], ("A", "B"))
    # checkerboard of 0/1: every neighbour differs by 1; Laplacian is -4 on ones, +4 on zeros;
    # 1.0 quantizes to the top level 7, 0.0 to level 0, so adjacent levels differ by 7.
    expected_a = {"mean": 0.5, "std": 0.5, "p50": 0.5, "p75": 1.0, "p95": 1.0,
                  "gradient_energy": 1.0, "laplacian_variance": 16.0, "haralick_contrast": 49.0}
    for stat, value in expected_a.items():
        assert stats[f"baseline_A_{stat}"] == pytest.approx(value, abs=1e-6), stat
    expected_b = {"mean": 0.25, "std": 0.0, "p50": 0.25, "p75": 0.25, "p95": 0.25,
                  "gradient_energy": 0.0, "laplacian_variance": 0.0, "haralick_contrast": 0.0}
    for stat, value in expected_b.items():
        assert stats[f"baseline_B_{stat}"] == pytest.approx(value, abs=1e-6), stat


def test_a_ramp_has_the_gradient_energy_of_its_slope_and_no_laplacian() -> None:
    size = 32
    ramp = np.tile(np.arange(size, dtype=np.float32) / size, (size, 1))  # slope 1/size along x only
    stats = _by_name(crop_statistics(ramp[None, :, :, None])[0], ("R",))
    assert stats["baseline_R_gradient_energy"] == pytest.approx(0.5 * (1 / size) ** 2, rel=1e-5)
    assert stats["baseline_R_laplacian_variance"] == pytest.approx(0.0, abs=1e-10)
    # 8 levels over 32 columns: a level step every 4 columns, so 1 in 4 horizontal pairs differ by 1.
    assert stats["baseline_R_haralick_contrast"] == pytest.approx(0.5 * (7 / 31), rel=1e-6)


def test_site_statistics_equal_statistics_of_independently_cut_crops() -> None:
    rng = np.random.default_rng(3)
    image = rng.gamma(2.0, 300.0, size=(200, 240, 5)).astype(np.float32)
    centers = np.array([[30.0, 40.0], [120.5, 100.25], [235.0, 5.0]])  # the last is a border cell
    crops = crop_cells(image, centers, normalization="minmax")
    got = site_statistics(image, centers)
    np.testing.assert_array_equal(got, crop_statistics(crops))
    assert got.shape == (3, 5 * len(STATISTICS))
    raw = site_statistics(image, centers, normalization=None)
    assert not np.allclose(raw, got)  # normalization is applied, not ignored


def test_baseline_cells_table_has_the_embed_metadata_and_named_features() -> None:
    rng = np.random.default_rng(4)
    image = rng.random((160, 160, 5), dtype=np.float32)
    locations = Locations.numbered(np.array([[50.0, 60.0], [100.0, 90.0]]), [7, 9])
    table = baseline_cells(image, locations, metadata={"Metadata_Plate": "P", "Metadata_Well": "A01", "Metadata_Site": "2"})
    names = table.column_names
    assert names[:7] == ["Metadata_Plate", "Metadata_Well", "Metadata_Site", "Metadata_Model",
                         "Metadata_ObjectNumber", "Metadata_Nuclei_Location_Center_X", "Metadata_Nuclei_Location_Center_Y"]
    assert names[7:] == feature_names()
    assert table.column("Metadata_ObjectNumber").to_pylist() == [7, 9]
    assert table.column("Metadata_Site").to_pylist() == [2, 2]
    np.testing.assert_array_equal(
        table.column("baseline_DNA_mean").to_numpy(), site_statistics(image, locations.centers)[:, 0]
    )


def test_a_cell_outside_the_image_is_an_input_error() -> None:
    image = np.ones((150, 150, 5), np.float32)
    with pytest.raises(InputError):
        site_statistics(image, np.array([[10.0, 10.0], [900.0, 900.0]]))
