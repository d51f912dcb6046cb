"""Brain MRI slices from the forms users keep them in, as uint8 arrays split by subject.

`load_slices(path)` finds the format (the README's "Data" section lists them) and returns a
`BrainSlices` of per-split `SliceSet`s; `load_volume_slices(file)` reads one volume file the
same way (`load_file_slices` one image or volume file); `make_tf_dataset` and
`code_map_dataset` turn slices and code maps into tf.data batches, and `slice_batches` and
`code_map_batches` into the batches Keras' backend trains on (tf.data, or NumPy on JAX).
Slices are shown in the neurological convention: anterior at the top, the subject's left on
the image's left.

    slices = load_slices("keras_png_slices_data", image_size=128)
    train = make_tf_dataset(slices.splits["train"], batch_size=32, shuffle=True, augment=True)

Modules: `slices` (types, split and folder names), `discovery` (which format a path holds),
`png_tree`, `volumes`, `npz`, `image_folder` (one per format family), `geometry` (reorientation,
crop, intensity scaling, upright, square), `decoding` (image files, parallel decoding),
`splits` (by person), `cache`, `demographics` (OASIS tables), `loading` (`load_slices`),
`pipeline` (tf.data), `arrays` (the NumPy batches for JAX), `summary` (the `dataset.py
summary` report), `demo` (the synthetic demo set).
"""

from .loading import load_file_slices, load_slices
from .pipeline import code_map_batches, code_map_dataset, make_tf_dataset, slice_batches
from .slices import SPLITS, BrainSlices, DataError, SliceSet
from .volumes import load_volume_slices

__all__ = [
    "SPLITS",
    "BrainSlices",
    "DataError",
    "SliceSet",
    "code_map_batches",
    "code_map_dataset",
    "load_file_slices",
    "load_slices",
    "load_volume_slices",
    "make_tf_dataset",
    "slice_batches",
]
