"""Mutated checkpoints: every mutant of a valid file either loads a model equal to the
original or raises CheckpointError, never another exception, within bounded time and
memory (both asserted for each example).

The mutations: bit flips and truncation of the file's bytes, edited header fields (top
level and nested), swapped, dropped, duplicated and re-typed members, and members
re-stored deflated with surplus data (their declared size true or understated).

Each run tries the hypothesis profile's number of examples per mutation kind (25 in CI).
Long mode: ``NANOAE_FUZZ_EXAMPLES=2000 pytest tests/test_checkpoint_fuzz.py`` tries
that many of each instead.
"""

import io
import json
import os
import tempfile
import time
import tracemalloc
import warnings
import zipfile
import zlib
from functools import lru_cache
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nanoae import RMSProp
from nanoae.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from nanoae.data.batching import BatchSampler
from test_checkpoint import assert_same_state, data, npy_bytes, raw_zip, small_autoencoder, stored

EXAMPLES = int(os.environ.get("NANOAE_FUZZ_EXAMPLES", "0")) or settings().max_examples
fuzz = settings(max_examples=EXAMPLES, deadline=None)

SECONDS_PER_LOAD = 5.0  # a load of this tiny model takes milliseconds; a bomb takes seconds
BYTES_PER_LOAD = 64 * 2**20  # its arrays are kilobytes; the surplus data reaches 16 MB


@lru_cache(maxsize=1)
def original():
    """(file bytes, {member: array}, header, loaded model) of one valid checkpoint."""
    model = small_autoencoder(RMSProp(0.01, momentum=0.9))
    model.fit(data(64, 20), steps=2, batch_size=32)
    with tempfile.TemporaryDirectory() as folder:
        path = save_checkpoint(Path(folder) / "good.npz", model, sampler=BatchSampler(64, 32, seed=7), extra={"loss": 0.5})
        blob = path.read_bytes()
        loaded = load_checkpoint(path, backend="numpy")
    with np.load(io.BytesIO(blob), allow_pickle=False) as archive:
        arrays = {name: archive[name] for name in archive.files}
    return blob, arrays, json.loads(arrays["header"].tobytes()), loaded


MEMBERS = ["header", "params", "optimizer/mean_square", "optimizer/momentum", "sampler/permutation"]


def savez_bytes(arrays: dict) -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    return buffer.getvalue()


def with_header(header) -> dict:
    _, arrays, _, _ = original()
    return {**arrays, "header": np.frombuffer(json.dumps(header).encode(), dtype=np.uint8)}


def check(blob: bytes, same_header: bool) -> None:
    """Load ``blob``: CheckpointError, or the original model, in bounded time and memory."""
    _, _, _, expected = original()
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "mutant.npz"
        path.write_bytes(blob)
        tracemalloc.start()
        start = time.perf_counter()
        try:
            loaded = load_checkpoint(path, backend="numpy")
        except CheckpointError as error:
            assert error.path == path
            loaded = None
        finally:
            seconds = time.perf_counter() - start
            _, peak = tracemalloc.get_traced_memory()
            tracemalloc.stop()
    assert seconds < SECONDS_PER_LOAD, seconds
    assert peak < BYTES_PER_LOAD, peak
    if loaded is None:
        return
    model = loaded.model
    # Whatever loads holds the original numbers: the arrays are CRC-checked and sized.
    assert model.arena.layout == expected.model.arena.layout
    assert np.array_equal(model.arena.values, expected.model.arena.values)
    for name, buffer in expected.model.optimizer.state.items():
        assert np.array_equal(model.optimizer.state[name], buffer), name
    if same_header:  # nothing but the bytes around the header changed: everything is the same
        assert_same_state(model, expected.model)
        assert loaded.header == expected.header
        assert np.array_equal(loaded.sampler_state["permutation"], expected.sampler_state["permutation"])


# ---- mutations of the file's bytes --------------------------------------------------
@fuzz
@given(st.data())
def test_bit_flips(draw):
    blob = bytearray(original()[0])
    flips = draw.draw(st.lists(st.tuples(st.integers(0, len(blob) - 1), st.integers(0, 7)), min_size=1, max_size=8))
    for index, bit in flips:
        blob[index] ^= 1 << bit
    check(bytes(blob), same_header=False)  # a flip in the header may be CRC-checked away, or not in it


@fuzz
@given(st.data())
def test_truncation(draw):
    blob = original()[0]
    cut = draw.draw(st.integers(0, len(blob) - 1))
    check(blob[:cut], same_header=True)


# ---- edited header fields ------------------------------------------------------------
json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.integers(-3, 40)
    | st.floats(allow_nan=True, allow_infinity=True) | st.text(max_size=8)
    | st.sampled_from(["float32", "float64", "float16", "Dense", "Autoencoder", "PCG64", "seed"]),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4),
    max_leaves=12,
)


def field_paths(document, prefix=()):
    """Every path to a value inside the header (dict keys and list indices)."""
    paths = [prefix] if prefix else []
    if isinstance(document, dict):
        for key, value in document.items():
            paths += field_paths(value, prefix + (key,))
    elif isinstance(document, list):
        for index, value in enumerate(document):
            paths += field_paths(value, prefix + (index,))
    return paths


@fuzz
@given(st.data())
def test_edited_header_fields(draw):
    _, _, header, _ = original()
    where = draw.draw(st.sampled_from(field_paths(header)))
    edited = json.loads(json.dumps(header))
    parent = edited
    for step in where[:-1]:
        parent = parent[step]
    if isinstance(parent, dict) and draw.draw(st.booleans()):
        del parent[where[-1]]
    else:
        parent[where[-1]] = draw.draw(json_values)
    check(savez_bytes(with_header(edited)), same_header=False)


# ---- members swapped, dropped, duplicated, re-typed, inflated -----------------------
@fuzz
@given(st.sampled_from(MEMBERS), st.sampled_from(MEMBERS))
def test_swapped_members(first, second):
    _, arrays, _, _ = original()
    swapped = {**arrays, first: arrays[second], second: arrays[first]}
    check(savez_bytes(swapped), same_header=first == second or "header" not in (first, second))


@fuzz
@given(st.sets(st.sampled_from(MEMBERS), min_size=1))
def test_dropped_members(names):
    _, arrays, _, _ = original()
    check(savez_bytes({k: v for k, v in arrays.items() if k not in names}), same_header=True)


@fuzz
@given(st.sampled_from(MEMBERS), st.booleans(), st.booleans())
def test_duplicated_members(name, zeros, first):
    _, arrays, _, _ = original()
    copy = np.zeros_like(arrays[name]) if zeros else arrays[name]
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive, warnings.catch_warnings():
        warnings.simplefilter("ignore")  # zipfile warns about the duplicate name
        if first:
            archive.writestr(f"{name}.npy", npy_bytes(copy))
        for member, value in arrays.items():
            archive.writestr(f"{member}.npy", npy_bytes(value))
        if not first:
            archive.writestr(f"{name}.npy", npy_bytes(copy))
    check(buffer.getvalue(), same_header=True)


DTYPES = ["float32", "float64", "float16", ">f4", "<f8", "int8", "int32", "int64", "uint8", "bool", "complex64", "<U3", "S4", "V4"]


@fuzz
@given(st.sampled_from(MEMBERS), st.sampled_from(DTYPES))
def test_retyped_members(name, dtype):
    _, arrays, _, _ = original()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # casting NaN-free floats to ints, complex...
        retyped = np.asarray(arrays[name]).astype(dtype) if dtype != "V4" else np.zeros(3, dtype="V4")
    check(savez_bytes({**arrays, name: retyped}), same_header=True)


@fuzz
@given(st.sampled_from(MEMBERS), st.integers(1, 16 * 2**20), st.booleans())
def test_inflated_members(name, surplus, understate):
    """A member re-stored deflated with ``surplus`` zero bytes after its data, its size
    declared truly (too big for its .npy header) or as the original's (a lying directory)."""
    _, arrays, _, _ = original()
    content = npy_bytes(arrays[name]) + bytes(surplus)
    packer = zlib.compressobj(6, zlib.DEFLATED, -15)
    packed = packer.compress(content) + packer.flush()
    declared = len(content) - surplus if understate else len(content)
    members = [stored(f"{m}.npy", npy_bytes(v)) for m, v in arrays.items() if m != name]
    members.append((f"{name}.npy", 8, packed, declared, zlib.crc32(content)))
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "inflated.npz"
        raw_zip(path, members)
        check(path.read_bytes(), same_header=True)


def test_the_fuzz_helpers_have_teeth():
    """Unmutated, the helpers' files load as the original; and the check catches a
    changed model (so a mutant that loaded wrong numbers could not pass)."""
    _, arrays, header, _ = original()
    check(savez_bytes(arrays), same_header=True)
    check(savez_bytes(with_header(header)), same_header=True)
    unchecked = {key: value for key, value in header.items() if key != "checksums"}  # as files before checksums
    changed = {**with_header(unchecked), "params": arrays["params"] + np.float32(1)}
    with pytest.raises(AssertionError):
        check(savez_bytes(changed), same_header=False)
    # with checksums, the same change is the file's fault
    check(savez_bytes({**arrays, "params": arrays["params"] + np.float32(1)}), same_header=True)
