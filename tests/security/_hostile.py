"""Shared builders for hostile inputs and a peak-memory probe that runs a parse in a fresh process."""

from __future__ import annotations

import io
import json
import os
import struct
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
NPZ_DIR = ROOT.parent / "shared" / "data" / "profiles" / "deepprofiler-npz-example"


def unicode_op(text: str) -> bytes:
    """Pickle BINUNICODE opcode pushing ``text``."""
    raw = text.encode()
    return b"X" + struct.pack("<I", len(raw)) + raw


def dtype_ops(descr: str, *, byteorder: str = "|", flags: int = 63) -> bytes:
    """Opcodes that push ``numpy.dtype(descr)`` and BUILD it with chosen (possibly forged) flags."""
    state = b"(K\x03" + unicode_op(byteorder) + b"NNN" + b"J\xff\xff\xff\xffJ\xff\xff\xff\xff"
    state += b"J" + struct.pack("<i", flags) + b"t"
    return b"cnumpy\ndtype\n" + unicode_op(descr) + b"\x89\x88\x87R" + state + b"b"


def object_scalar_gadget(address: bytes = b"\x41" * 8) -> bytes:
    """The published attack: dtype('O8') with its flags rewritten to 0, then scalar() on 8 chosen bytes.

    numpy then reads those bytes as a PyObject pointer: a segfault, or any object at a known address.
    """
    pickled = b"\x80\x03cnumpy.core.multiarray\nscalar\n" + dtype_ops("O8", flags=0)
    return pickled + b"C" + bytes([len(address)]) + address + b"\x86R."


def metadata_dict_pickle(entries: bytes) -> bytes:
    """DeepProfiler's exact metadata shape (0-d object array holding a dict) around raw SETITEMS entries."""
    head = b"\x80\x03cnumpy.core.multiarray\n_reconstruct\ncnumpy\nndarray\nK\x00\x85C\x01b\x87R"
    return head + b"(K\x01)" + dtype_ops("O8") + b"\x89]}(" + entries + b"uatb."


def npy_member(header: dict[str, object], payload: bytes) -> bytes:
    buffer = io.BytesIO()
    np.lib.format.write_array_header_1_0(buffer, header)
    return buffer.getvalue() + payload


def write_npz(path: Path, *, metadata: bytes | None = None, features: bytes | None = None) -> Path:
    """A site file with a raw pickled ``metadata`` and a ``features`` member (benign when not given)."""
    if features is None:
        buffer = io.BytesIO()
        np.save(buffer, np.ones((2, 3), np.float32))
        features = buffer.getvalue()
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        if metadata is not None:
            archive.writestr("metadata.npy", npy_member({"descr": "|O", "fortran_order": False, "shape": ()}, metadata))
        archive.writestr("features.npy", features)
    return path


_PROBE = """
import json, resource, sys, traceback
sys.setrecursionlimit(10_000)
{setup}
def peak():
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
before = peak()
try:
    {call}
    outcome = "ok"
except Exception as exc:
    outcome = type(exc).__name__ + ": " + str(exc)[:300]
print(json.dumps({{"before": before, "peak": peak(), "outcome": outcome}}))
"""


def run_probe(setup: str, call: str, *, timeout: float = 120) -> dict[str, object]:
    """Run ``call`` after ``setup`` in a fresh interpreter -> {"before", "peak" (bytes), "outcome"}.

    A crash (segfault) or a kill shows up as an ``outcome`` naming the signal, so a test fails
    instead of taking pytest down with it.
    """
    code = _PROBE.format(setup=setup, call=call)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=timeout, env=env)
    if done.returncode != 0:
        return {"before": 0, "peak": 0, "outcome": f"process died with code {done.returncode}: {done.stderr[-300:]}"}
    return json.loads(done.stdout.strip().splitlines()[-1])
