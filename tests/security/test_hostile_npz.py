"""Crafted DeepProfiler ``.npz`` site files: every one is an InputError, none runs code or eats memory."""

from __future__ import annotations

import io
import random
import zipfile
from pathlib import Path

import numpy as np
import pytest
from _hostile import (
    NPZ_DIR,
    dtype_ops,
    metadata_dict_pickle,
    npy_member,
    object_scalar_gadget,
    run_probe,
    unicode_op,
    write_npz,
)

from cpcnn.errors import InputError, PayloadTooLarge
from cpcnn.io.cells import write_cells
from cpcnn.profiles._npz import read_site, read_site_metadata
from cpcnn.profiles._npz_metadata import MAX_DEPTH, parse_metadata_pickle
from cpcnn.profiles.tables import read_profiles

REAL_SITES = sorted(NPZ_DIR.glob("*.npz")) if NPZ_DIR.is_dir() else []
needs_real = pytest.mark.skipif(not REAL_SITES, reason="shared DeepProfiler example data not present")


def _real_pickle(path: Path) -> bytes:
    with zipfile.ZipFile(path) as archive:
        raw = io.BytesIO(archive.read("metadata.npy"))
    np.lib.format.read_magic(raw)
    np.lib.format.read_array_header_1_0(raw)
    return raw.read()


def test_object_scalar_gadget_is_refused_in_a_fresh_process(tmp_path: Path) -> None:
    # Run where a segfault cannot take the test session down: before the fix this process died.
    for name, pickled in {
        "bare.npz": object_scalar_gadget(),
        "in_dict.npz": metadata_dict_pickle(
            unicode_op("Metadata_Plate") + object_scalar_gadget()[2:-1]  # the gadget as a dict value
        ),
    }.items():
        path = write_npz(tmp_path / name, metadata=pickled)
        probe = run_probe("from pathlib import Path\nfrom cpcnn.profiles._npz import read_site_metadata",
                          f"read_site_metadata(Path({str(path)!r}))")
        assert str(probe["outcome"]).startswith("InputError"), probe["outcome"]
        assert "O8" in str(probe["outcome"])


@pytest.mark.parametrize("flags", [0, 1, 16, 61, 63, -1])
@pytest.mark.parametrize("descr", ["O8", "i8", "f8", "V8", "S8", "M8"])
def test_forged_dtype_flags_never_reach_numpy(descr: str, flags: int) -> None:
    pickled = b"\x80\x03cnumpy.core.multiarray\nscalar\n" + dtype_ops(descr, flags=flags)
    pickled += b"C\x08" + b"\x41" * 8 + b"\x86R."
    entry = unicode_op("k") + pickled[2:-1]
    with pytest.raises(InputError):
        parse_metadata_pickle(pickled)
    if descr in ("i8", "f8"):  # plain dtypes decode in pure Python whatever the forged flags say
        value = parse_metadata_pickle(metadata_dict_pickle(entry))["k"]
        assert value == (0x4141414141414141 if descr == "i8" else np.frombuffer(b"\x41" * 8, "<f8")[0])
    else:
        with pytest.raises(InputError, match="not one metadata uses|not metadata"):
            parse_metadata_pickle(metadata_dict_pickle(entry))


@pytest.mark.parametrize(
    "pickled, message",
    [
        (b"\x80\x03cos\nsystem\n" + unicode_op("true") + b"\x85R.", "refusing to load global os.system"),
        (b"\x80\x03cbuiltins\neval\n.", "refusing to load global builtins.eval"),
        (b"\x80\x04\x8c\x05numpy\x8c\nfrombuffer\x93.", "refusing to load global numpy.frombuffer"),
        (b"\x80\x03cnumpy\nndarray\n)R.", "REDUCE|cannot be called"),
        (b"\x80\x03" + b"(" * 100_000 + b".", f"deeper than {MAX_DEPTH}"),
        (b"\x80\x03" + b"]" * 5000 + b"a" * 4999 + b".", "expected str or number|expected a dict"),
        (b"\x80\x03}q\x00X\x01\x00\x00\x00kh\x00s.", "expected str or number"),  # a dict inside itself
        (b"\x80\x03h\x05.", "never stored"),
        (b"\x80\x03" + b"K\x01q\x00" * 2 + b"".join(b"K\x01r" + i.to_bytes(4, "little") for i in range(20_000)) + b".",
         "memo is over the limit"),
        (b"\x80\x03B\xff\xff\xff\x7fabc.", "unreadable pickled metadata"),  # declares 2 GB of bytes
        (b"\x80\x03\x8b\xff\xff\xff\x7f.", "unreadable|not used"),  # LONG4 declaring 2 GB
        (b"\x80\x03I1\n.", "not used by DeepProfiler"),
        (b"\x80\x03", "unreadable|without STOP"),
        (b"", "unreadable|without STOP"),
        (b"\x80\x03K\x01K\x02.", "malformed stack"),
        (b"\x80\x03(K\x01s.", "odd number|empty stack"),
        (b"\x80\x03}(K\x01K\x02u.", "key 1 is a int"),
        (b"\x80\x03(.", "malformed stack"),
        (b"\x80\x03(q\x00h\x00h\x00t.", "MARK"),
    ],
)
def test_hostile_metadata_pickles_are_input_errors(pickled: bytes, message: str) -> None:
    with pytest.raises(InputError, match=message):
        parse_metadata_pickle(pickled)


def test_huge_declared_shapes_are_refused(tmp_path: Path) -> None:
    # A metadata array that claims 10^12 objects, and a features header that claims 4 PB.
    huge = metadata_dict_pickle(b"").replace(b"(K\x01)", b"(K\x01J\xff\xff\xff\x7fJ\xff\xff\xff\x7f\x86", 1)
    with pytest.raises(InputError, match="shape"):
        parse_metadata_pickle(huge)
    header = {"descr": "<f4", "fortran_order": False, "shape": (10**9, 10**6)}
    path = write_npz(tmp_path / "huge.npz", features=npy_member(header, b"\x00" * 64))
    with pytest.raises(InputError, match=r"header declares shape \(1000000000, 1000000\)"):
        read_site(path, tmp_path)
    objects = write_npz(tmp_path / "objects.npz", features=npy_member(
        {"descr": "|O", "fortran_order": False, "shape": (1,)}, object_scalar_gadget()))
    with pytest.raises(InputError, match="expected plain numbers"):
        read_site(objects, tmp_path)


def test_zip_bomb_members_are_refused_before_inflating(tmp_path: Path) -> None:
    bomb = tmp_path / "bomb.npz"
    with zipfile.ZipFile(bomb, "w", zipfile.ZIP_DEFLATED) as archive:
        with archive.open("features.npy", "w", force_zip64=True) as member:
            member.write(npy_member({"descr": "<f4", "fortran_order": False, "shape": (8, 2**20)}, b""))
            zeros = bytes(2**22)
            for _ in range(8):
                member.write(zeros)
    assert bomb.stat().st_size < 2**20
    with pytest.raises(PayloadTooLarge, match="compression ratio"):
        read_site(bomb, tmp_path)
    many = tmp_path / "many.npz"
    with zipfile.ZipFile(many, "w") as archive:
        for index in range(500):
            archive.writestr(f"m{index}.npy", b"")
    with pytest.raises(PayloadTooLarge, match="500 members"):
        read_site(many, tmp_path)
    with pytest.raises(InputError, match="no zip directory"):
        read_site(_truncated(write_npz(tmp_path / "t.npz")), tmp_path)


def _truncated(path: Path) -> Path:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


@needs_real
def test_every_truncation_and_byte_flip_of_real_metadata_is_clean() -> None:
    pickled = _real_pickle(REAL_SITES[0])
    for end in range(len(pickled)):
        with pytest.raises(InputError):
            parse_metadata_pickle(pickled[:end])
    rng = random.Random(0)
    for _ in range(3000):
        mutated = bytearray(pickled)
        for _ in range(rng.randint(1, 4)):
            mutated[rng.randrange(len(mutated))] = rng.randrange(256)
        try:
            value = parse_metadata_pickle(bytes(mutated))
        except InputError:
            continue
        assert all(isinstance(k, str) and isinstance(v, str | int | float | bool | None) for k, v in value.items())


@needs_real
@pytest.mark.parametrize("path", REAL_SITES, ids=lambda p: p.name)
def test_real_deepprofiler_metadata_matches_trusted_unpickling(path: Path) -> None:
    with np.load(path, allow_pickle=True) as trusted:  # the repository's own, trusted data
        expected = trusted["metadata"].item()
        features = trusted["features"]
    assert read_site_metadata(path) == expected
    np.testing.assert_array_equal(read_site(path, path.parent).filter(regex=r"^(efficientnet|cnn)_").to_numpy(),
                                  features)


def test_numpy_scalars_and_our_own_writer_round_trip(tmp_path: Path) -> None:
    values = {"a": np.int64(-5), "b": np.float32(1.5), "c": np.str_("xyz"), "d": np.bool_(True),
              "e": np.uint16(7), "f": 2**70, "g": -0.25, "h": None, "i": np.float64(np.nan), "j": np.float32(0.1)}
    buffer = io.BytesIO()
    np.save(buffer, np.array(values, dtype=object))  # numpy's own pickling, protocol 4
    path = write_npz(tmp_path / "scalars.npz", metadata=buffer.getvalue()[128:])
    decoded = read_site_metadata(path)
    assert {k: v for k, v in decoded.items() if k != "i"} == {k: v for k, v in values.items() if k != "i"}
    assert all(type(v) in (int, float, str, bool, type(None)) for v in decoded.values()) and np.isnan(decoded["i"])
    assert str(decoded["j"]) == "0.1"  # printed as numpy prints a float32, as str() did before
    features = np.arange(12, dtype=np.float32).reshape(4, 3)
    ours = write_cells(tmp_path / "P1" / "A01" / "1.npz", features, np.full((4, 2), 64.0),
                       metadata={"Metadata_Plate": "P1", "Metadata_Well": "A01"}, model_name="m")
    assert read_site_metadata(ours) == {"Metadata_Plate": "P1", "Metadata_Well": "A01", "Metadata_Site": "",
                                        "Metadata_Model": "efficientnet"}
    table = read_profiles(ours)
    np.testing.assert_array_equal(table.filter(like="efficientnet_").to_numpy(), features)
    assert table["Metadata_ObjectNumber"].tolist() == [1, 2, 3, 4]  # our object_numbers member, read without pickle


@pytest.mark.slow
def test_npz_bomb_peak_memory_stays_near_a_benign_read(tmp_path: Path) -> None:
    bomb = tmp_path / "bomb.npz"
    with zipfile.ZipFile(bomb, "w", zipfile.ZIP_DEFLATED) as archive:
        with archive.open("features.npy", "w", force_zip64=True) as member:
            member.write(npy_member({"descr": "<f4", "fortran_order": False, "shape": (128, 2**20)}, b""))
            zeros = bytes(2**22)
            for _ in range(128):
                member.write(zeros)
    benign = write_cells(tmp_path / "ok" / "1.npz", np.ones((10, 672), np.float32), np.ones((10, 2)),
                         metadata={}, model_name="m")
    setup = "from pathlib import Path\nfrom cpcnn.profiles._npz import read_site"
    base = run_probe(setup, f"read_site(Path({str(benign)!r}))")
    hostile = run_probe(setup, f"read_site(Path({str(bomb)!r}))")
    assert base["outcome"] == "ok" and hostile["outcome"].startswith("PayloadTooLarge"), hostile
    assert int(hostile["peak"]) - int(base["peak"]) < 100 * 2**20


def test_corrupt_members_are_input_errors(tmp_path: Path) -> None:
    features = np.random.default_rng(0).random((64, 64)).astype(np.float32)
    good = write_cells(tmp_path / "good.npz", features, np.ones((64, 2)), metadata={}, model_name="m")
    data = good.read_bytes()
    rng = random.Random(1)
    for trial in range(40):
        mutated = bytearray(data)
        for _ in range(8):
            mutated[rng.randrange(40, len(data) // 2)] ^= 0xFF
        path = tmp_path / f"bad{trial}.npz"
        path.write_bytes(bytes(mutated))
        try:
            read_site(path, tmp_path)
        except InputError:
            continue
