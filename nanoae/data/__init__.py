"""Data for nanoae: MNIST, Fashion-MNIST and the MNIST sample shipped with nanoae, found, verified and loaded.

Typical use::

    from nanoae.data import load_dataset, BatchSampler
    train = load_dataset("mnist", "train")          # images float32 (60000, 784) in [0, 1]
    small = load_dataset("mnist-sample", "train")   # the first 6,000 of them, shipped with nanoae
    sampler = BatchSampler(len(train), 256, seed=0)          # owns its generator
    x = train.images[sampler.next_indices()]         # (256, 784)

Modules, one job each:
    idx        read IDX files (gzip'd or raw)
    registry   the datasets: file names, shapes, checksums, mirrors
    checksum   MD5 checks against the published checksums
    sources    local places to find the files (data_dir, $NANOAE_DATA, cache, Debian,
               the package's sample/ folder)
    download   verified downloads into the cache
    datasets   load_dataset (with the MNIST sample as MNIST's last resort) and Dataset
    batching   BatchSampler, shuffled batches across epoch boundaries; holdout_rows
    files      load_data_file: the user's own .npy/.npz/.csv/.tsv file or image folder
    rows       ScaledRows: rows of stored data, scaled a batch at a time (no full copy)
"""

from .batching import BatchSampler, holdout_rows
from .datasets import Dataset, clear_memory_cache, load_dataset
from .download import DownloadError
from .errors import DataError
from .files import ArrayData, is_own_data, load_data_file
from .idx import read_idx
from .registry import DATASETS
from .rows import ScaledRows
from .sources import cache_dir, find_data_dir

__all__ = [
    "read_idx",
    "load_dataset",
    "Dataset",
    "DataError",
    "DownloadError",
    "BatchSampler",
    "find_data_dir",
    "cache_dir",
    "clear_memory_cache",
    "DATASETS",
    "ArrayData",
    "load_data_file",
    "is_own_data",
    "holdout_rows",
    "ScaledRows",
]
