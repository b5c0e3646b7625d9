"""What each supported dataset is: its four IDX files, their official checksums, the mirrors that
serve them and its class names. The file names, md5s (of the official `.gz` files) and mirror base
URLs are the ones torchvision's `MNIST` and `FashionMNIST` classes use.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from types import MappingProxyType

from vaegan.errors import ConfigError

# Roles of the four files, in the order they are fetched and listed.
ROLES = ("train_images", "train_labels", "test_images", "test_labels")

_FILE_NAMES = MappingProxyType(
    {
        "train_images": "train-images-idx3-ubyte.gz",
        "train_labels": "train-labels-idx1-ubyte.gz",
        "test_images": "t10k-images-idx3-ubyte.gz",
        "test_labels": "t10k-labels-idx1-ubyte.gz",
    }
)


@dataclass(frozen=True)
class DatasetSpec:
    """One dataset: the four `.gz` IDX file names by role, their official md5s, mirrors, classes."""

    name: str
    files: Mapping[str, str]  # role -> file name (.gz)
    md5: Mapping[str, str]  # file name -> md5 of the official .gz file
    mirrors: tuple[str, ...]  # base URLs; a file's URL is <mirror>/<file name>
    classes: tuple[str, ...]

    @property
    def file_names(self) -> tuple[str, ...]:
        """The four `.gz` file names in `ROLES` order."""
        return tuple(self.files[role] for role in ROLES)

    @property
    def num_classes(self) -> int:
        return len(self.classes)


MNIST = DatasetSpec(
    name="mnist",
    files=_FILE_NAMES,
    md5=MappingProxyType(
        {
            "train-images-idx3-ubyte.gz": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
            "train-labels-idx1-ubyte.gz": "d53e105ee54ea40749a09fcbcd1e9432",
            "t10k-images-idx3-ubyte.gz": "9fb629c4189551a2d022fa330f9573f3",
            "t10k-labels-idx1-ubyte.gz": "ec29112dd5afa0611ce80d1b7f02629c",
        }
    ),
    mirrors=(
        "https://ossci-datasets.s3.amazonaws.com/mnist/",
        "http://yann.lecun.com/exdb/mnist/",
    ),
    classes=(
        "0 - zero",
        "1 - one",
        "2 - two",
        "3 - three",
        "4 - four",
        "5 - five",
        "6 - six",
        "7 - seven",
        "8 - eight",
        "9 - nine",
    ),
)

FASHION_MNIST = DatasetSpec(
    name="fashion-mnist",
    files=_FILE_NAMES,
    md5=MappingProxyType(
        {
            "train-images-idx3-ubyte.gz": "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
            "train-labels-idx1-ubyte.gz": "25c81989df183df01b3e8a0aad5dffbe",
            "t10k-images-idx3-ubyte.gz": "bef4ecab320f06d8554ea6380940ec79",
            "t10k-labels-idx1-ubyte.gz": "bb300cfdad3c16e7a12a480ee83cd310",
        }
    ),
    mirrors=("http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",),
    classes=(
        "T-shirt/top",
        "Trouser",
        "Pullover",
        "Dress",
        "Coat",
        "Sandal",
        "Shirt",
        "Sneaker",
        "Bag",
        "Ankle boot",
    ),
)

DATASETS: Mapping[str, DatasetSpec] = MappingProxyType({spec.name: spec for spec in (MNIST, FASHION_MNIST)})

# The MNIST sample shipped in the package (sample_data/mnist/README.md): sha256 of each decompressed
# file. The training files hold the first 10,000 of the 60,000 official records, so the official
# md5s do not apply to them; the test files are byte-identical to the official ones.
SAMPLE_DATASET = "mnist"
SAMPLE_SHA256: Mapping[str, str] = MappingProxyType(
    {
        "train-images-idx3-ubyte.gz": "2889698e6bc3614913e76901316712919d1998fc2b44512451bfe65bc1e668b1",
        "train-labels-idx1-ubyte.gz": "651e38e2ac0632f5113ec18f1df4977117f953197819034009971a6675a0df78",
        "t10k-images-idx3-ubyte.gz": "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",
        "t10k-labels-idx1-ubyte.gz": "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2",
    }
)
SAMPLE_NOTE = (
    "MNIST SAMPLE, NOT THE FULL DATASET: the first 10,000 of the 60,000 official training images "
    "and labels, plus the full official test set (10,000), shipped inside the vaegan package"
)


def dataset_spec(name: str) -> DatasetSpec:
    """The spec of dataset `name`; an unknown name is a `ConfigError` naming `data.dataset`."""
    try:
        return DATASETS[name]
    except KeyError:
        raise ConfigError(f"data.dataset: {name!r} is not one of {', '.join(sorted(DATASETS))}") from None


def sample_directory() -> Path:
    """The directory of the shipped MNIST sample (inside the installed package)."""
    return Path(str(resources.files("vaegan") / "sample_data" / SAMPLE_DATASET))
