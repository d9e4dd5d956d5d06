"""The importer's pickle reader builds plain data and numeric arrays only, from checked bytes: forged dtype and array
states, memo and nesting bombs are refused in bounded time and memory, and nothing it builds comes from process
memory."""

import pickle
import subprocess
import sys

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from jasmine.data.import_jasmine import read_record
from jasmine.data.records import RecordFormatError
from jasmine.data.safe_pickle import UnsafePickle, loads


class Forged:
    """Pickles as ``numpy.dtype`` REDUCE + BUILD with the given state (what a hostile record can write)."""

    def __init__(self, spec, state):
        self.spec, self.state = spec, state

    def __reduce__(self):
        return (np.dtype, (self.spec, False, True), self.state)


@pytest.mark.parametrize("protocol", [2, 3, 4, 5])
def test_plain_data_and_numeric_arrays_round_trip(protocol):
    arrays = [(np.arange(12) % 3).astype(d).reshape(3, 4) for d in ("u1", "i4", ">i8", "f4", "?")]
    obj = {"a": arrays, "t": (1, 2.5, None, True), "s": "text", "b": b"\x00\xff", "big": 2**70, "f": arrays[2].T}
    got = loads(pickle.dumps(obj, protocol=protocol))
    assert got.keys() == obj.keys() and got["t"] == obj["t"] and got["b"] == obj["b"] and got["big"] == 2**70
    for x, y in zip(got["a"] + [got["f"]], arrays + [obj["f"]], strict=True):
        assert x.dtype == y.dtype and np.array_equal(x, y)


@pytest.mark.parametrize(
    "obj, why",
    [
        (np.array([1, None], dtype=object), "only plain numeric dtypes"),
        (np.zeros(2, dtype=[("a", "<i4"), ("b", "<f8")]), "plain numeric dtypes"),
        (np.zeros(2, dtype="U3"), "only plain numeric dtypes"),
        (Forged("i4", (3, "<", None, None, None, 100, 1, 0)), "a size or flags of its own"),
        (Forged("V8", (3, "|", None, ("a",), {"a": (np.dtype("i4"), 1000)}, 8, 1, 16)), "plain numeric"),
        (Forged("O", (3, "|", None, None, None, -1, -1, 63)), "plain numeric"),
        (np.dtype("i4"), "a bare dtype"),
        (print, r"refused (builtins|__builtin__)\.print"),
    ],
)
def test_forged_dtypes_and_foreign_objects_are_refused(obj, why):
    for protocol in (2, 5):
        buf = pickle.dumps({"x": obj}, protocol=protocol)
        with pytest.raises(UnsafePickle, match=why):
            loads(buf)


def test_an_array_whose_bytes_do_not_match_its_shape_is_refused():
    buf = pickle.dumps(np.zeros(4, np.int32), protocol=2)
    # the same record claiming 4096 elements: NumPy would read past the 16 bytes it holds
    assert buf.count(b"K\x04\x85") == 1  # the shape (4,): BININT1 4, TUPLE1
    forged = buf.replace(b"K\x04\x85", b"M\x00\x10\x85")  # BININT2 4096
    with pytest.raises(UnsafePickle, match="needs 16384 bytes, the record holds 16"):
        loads(forged)


def test_memo_and_nesting_bombs_cost_nothing(tmp_path):
    shared = []
    for _ in range(28):  # 2**28 leaves through memo-shared lists, in a few hundred bytes
        shared = [shared, shared]
    bomb = pickle.dumps({"raw_video": b"\x00" * 12, "sequence_length": 1, "actions": shared})
    assert len(bomb) < 2000
    with pytest.raises(RecordFormatError, match="actions as a list must be 1 integer ids"):
        read_record(bomb, "r", (2, 2, 3))
    memo = b"\x80\x04N\x94r\xff\xff\xff\x7f."  # a 10-byte record whose memo index asks the C unpickler for 16 GiB
    code = (
        "import resource, sys; resource.setrlimit(resource.RLIMIT_AS, (2 << 30, 2 << 30));"
        "from jasmine.data.safe_pickle import loads; print(loads(sys.stdin.buffer.read()))"
    )
    out = subprocess.run([sys.executable, "-c", code], input=memo, capture_output=True, timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == b"None", out.stderr[-500:]
    plain = subprocess.run([sys.executable, "-c", code.replace("from jasmine.data.safe_pickle import loads",
                                                               "from pickle import loads")],
                           input=memo, capture_output=True, timeout=120)  # fmt: skip
    assert plain.returncode != 0 and b"MemoryError" in plain.stderr, "the bomb is real under plain pickle"
    deep = b"\x80\x04" + b"(" * 1000 + b"l" * 1000 + b"."
    with pytest.raises(UnsafePickle, match="nesting deeper than 32"):
        loads(deep)


@settings(max_examples=300, deadline=None)
@given(st.data())
def test_mutated_pickles_give_data_or_a_refusal_never_another_error(data):
    buf = bytearray(pickle.dumps({"raw_video": np.arange(24, dtype=np.uint8), "n": 2, "a": [1, 2]}, protocol=4))
    for _ in range(data.draw(st.integers(1, 4))):
        i = data.draw(st.integers(0, len(buf) - 1))
        buf[i] = data.draw(st.integers(0, 255))
    try:
        loads(bytes(buf))
    except UnsafePickle:
        pass
