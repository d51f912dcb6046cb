"""A synthetic, offline demo dataset of axial brain MRI slices made from the MNI152 template.

OASIS cannot be downloaded on every machine, so `build_demo_dataset` writes a stand-in in the
exact on-disk layout of the preprocessed OASIS PNG slices (`keras_png_slices_data`, read by
`png_tree`): per split a folder keras_png_slices_{split} of `case_NNN_slice_S.nii.png` images
and a folder keras_png_slices_seg_{split} of `seg_NNN_slice_S.nii.png` tissue masks (grey value
85 * class), 32 slices per subject, 256x256 8-bit greyscale; beside them an OASIS-1 style
oasis_cross-sectional.csv gives every subject's age, sex, CDR and MMSE, which its anatomy
follows, so `load_slices` fills `BrainSlices.demographics` for every subject.

**The data are synthetic.** Every "subject" is the one MNI152 2009a nonlinear symmetric
template that nilearn ships (`nilearn/datasets/data/mni_icbm152_*_09a_converted.nii.gz`:
skull-stripped T1, 197x233x189 voxels of 1 mm, with grey- and white-matter probability maps;
Fonov et al., NeuroImage 2011), resampled through a random transform and given random
scanner-like intensities. Nothing is OASIS and nothing touches the network.

Demographics (`draw_demographics`), shaped like OASIS-1 (416 people aged 18-96, about 60%
women; 100 with very mild to moderate dementia, CDR 0.5 / 1 / 2 for 70 / 28 / 2 of them, all
over 60; Marcus et al., J Cogn Neurosci 2007):

- age: with probability 0.30 / 0.22 / 0.48 uniform in [18, 30] / [30, 60] / [60, 96] years,
  rounded to whole years, stratified within each split (`split_age_quantiles`: a split of n
  people has one in each of n equally likely strata of this distribution, so that even the 8
  test people span the ages and an age regressor can be checked on them); sex: F with
  probability 0.62;
- CDR: 0 below 60; from 60 on, dementia with probability 0.1 + 0.8 (age - 60) / 36 (half of
  the over-60s, as in OASIS-1), then CDR 0.5 / 1 / 2 with probability 0.68 / 0.26 / 0.06;
- MMSE ~ N(29, 1), N(26, 2.5), N(21, 3.5), N(15, 4) for CDR 0, 0.5, 1, 2, rounded and clipped
  to [0, 30]. (OASIS-1 leaves CDR and MMSE blank under 60; the demo fills them in, so that
  conditioning has a label for every subject.)

Ageing. With the ageing curve A = ((age - 18) / 78)^2 (0 at 18, 0.4 at 67, 1 at 96; brains
change little before 50 and fast after 70) and a subject's own noise,

    m     = clip(-1.5 + 6.0 A + 1.5 CDR + N(0, 0.75^2), -2.5, 7.5)   ventricle change, mm
    delta = max(1.0 A + 0.3 CDR + N(0, 0.15^2), 0)                   cortical thinning, mm

so a 20-year-old's ventricles shrink a little (m about -1.5) and a 90-year-old's with CDR 2
grow to about twice their area (m about 7), and the pial surface moves inwards by delta (below).

Geometry. Subject space is millimetres around the centre c of the template brain's bounding
box, axes RAS. A subject point p maps back into the template (voxel coordinates) by

    q(p) = c + R (p / s) + t + u_coarse(p) + u_fine(p)
    T(p) = q after 4 steps of q <- q + (m / 4) g(q)

- s: per-axis size factors s_i = s f_sex (1 + a_i), s ~ U(0.92, 1.08), a_i ~ U(-0.03, 0.03),
  f_sex = 0.978 for women and 1.022 for men (men's heads are some 14% larger in volume; a
  subject 5% larger samples the template at p / 1.05);
- R: rotation by Euler angles ~ U(-4, 4) degrees about each axis; t ~ U(-2, 2) mm;
- u_coarse, u_fine: smooth random displacement fields, tensor-product cubic splines through
  independent N(0, sigma^2) displacements on a 6x6x6 grid (sigma = 3 mm) and a 12x12x12 grid
  (sigma = 1.2 mm) spread over a 240 mm cube: the first bends the whole brain, the second moves
  gyri a little so that the folding does not look copied;
- g = grad(G_5mm * V) / max|grad(G_5mm * V)|: the unit-peak gradient of the ventricle mask V
  (the largest cerebrospinal-fluid component not touching the brain surface) smoothed by a
  Gaussian of 5 mm; it points into the ventricles, so moving the sample point along m g with
  m > 0 pulls ventricle into the surrounding tissue (enlarged ventricles, as with age-related
  atrophy) and m < 0 shrinks them; m follows age and CDR (above). Taking four small steps
  instead of one step of m g keeps the warp from folding next to the ventricles (Jacobian
  stays > 0).

T is evaluated on every 4th pixel of each output plane and interpolated bilinearly (the field is
smooth on a scale of centimetres), then the template is sampled only at the 32 x 256 x 256
output points with trilinear interpolation (`scipy.ndimage.map_coordinates`, order 1). The 32
axial planes are evenly spaced from 55 mm below to 60 mm above c (lower cerebellum and
temporal lobes to near the vertex), 0.85 mm pixels, shown in the neurological convention of the
loaders (`geometry`): anterior at the top, the subject's left on the image's left, so column j
lies at x = (j - 127.5) * 0.85 mm and row i at y = (127.5 - i) * 0.85 mm from c.

Cortical thinning (`thin_cortex`). Let d be the distance (mm) from a template voxel to the
nearest voxel of outer CSF or background: the voxels with P_gm + P_wm < 0.8 connected to the
outside of the brain (0.8, not 0.5, because the averaged template's sulci are mostly
partial-volume CSF; the ventricles are enclosed, so they do not count). At each sample the
fraction c = clip(delta - d, 0, 1) of the tissue turns into CSF, and the T1 follows as a
mixture of pure tissues (mu_csf, mu_gm, mu_wm: the template's median T1 in voxels > 90% CSF,
GM, WM):

    P_gm' = (1 - c) P_gm,  P_wm' = (1 - c) P_wm,
    I'    = I - c (P_gm (mu_gm - mu_csf) + P_wm (mu_wm - mu_csf))

The pial surface moves about delta inwards: sulci widen, the cortex thins, the brain mask (the
intracranial space, as the template has no skull) stays, and the brain's tissue fraction falls.

Intensity. With I the thinned T1 in [0, 1] and P_gm, P_wm, P_brain the sampled, thinned
probabilities:

    I1 = (I (1 + k (P_wm - P_gm)))^gamma                  k ~ U(-0.05, 0.08), gamma ~ U(0.9, 1.5)
    I2 = I1 * exp(b(p)),  b = spline of N(0, sigma_b^2) on a 4x4x4 grid, clipped to +-0.2,
                          sigma_b ~ U(0.04, 0.1)         (a smooth bias field of about 10-20%)
    I3 = sqrt((I2 + sigma n1)^2 + (sigma n2)^2)           n1, n2 ~ N(0, 1); Rician noise,
                                                          sigma ~ U(0.01, 0.04)
    pixel = round(255 * w * I3 / percentile_99.5(I3 over the subject's brain)),  w ~ U(0.85, 1)

and background (class 0) is set to 0, as in skull-stripped OASIS slices.

Masks. Class = argmax(1 - P_brain, P_csf, P_gm, P_wm) with P_csf = max(P_brain - P_gm - P_wm, 0),
so the mask is warped by exactly the same T as the image; written as grey value 85 * class.

The table (`table_row`) has the OASIS-1 header ID,M/F,Hand,Age,Educ,SES,MMSE,CDR,eTIV,nWBV,
ASF,Delay; ID is the PNG tree's subject id ("001"), Hand is R (as for all of OASIS-1), Educ and
SES are blank, Delay is N/A, and the three volumes are measured on the synthetic brain: eTIV =
V s_x s_y s_z in cm^3 with V the template's brain-mask volume (1887 cm^3), ASF = 1 /
(s_x s_y s_z) (the volume scaling onto the template, the "atlas" here; OASIS: eTIV = 1755 cm^3 /
ASF), nWBV = the fraction of the brain-mask pixels of the subject's 32 slices that are grey or
white matter (about 0.93 at 20 down to 0.75 at 90 with dementia; OASIS's is of the whole
atlas-masked head, about 0.85 down to 0.70).

Reproducibility. Subject number n (the case number, unique across splits) draws all of its
randomness, demographics first, from `numpy.random.default_rng([seed, n])`, so a seed gives
byte-identical PNGs and table for any number of worker processes.
"""

import concurrent.futures
import csv
import functools
import multiprocessing
import secrets
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image
from scipy import ndimage
from scipy.interpolate import CubicSpline
from scipy.spatial.transform import Rotation

from .demographics import CROSS_SECTIONAL_COLUMNS, CROSS_SECTIONAL_FILE
from .slices import MASK_GREY_STEP, SPLITS, png_folder

SLICES_PER_SUBJECT = 32
IMAGE_SIZE = 256
PIXEL_SPACING_MM = 0.85
SLICE_RANGE_MM = (-55.0, 60.0)  # lowest and highest plane, relative to the brain centre
COARSE_GRID_STEP = 4  # the transform is computed on every 4th pixel, then interpolated
FIELD_HALF_WIDTH_MM = 120.0  # the displacement and bias grids span [-120, 120] mm per axis
MAX_CASE_NUMBER = 999  # case ids have three digits
# The first line of README.txt; unchanged since the builder lived in demo_data.py, so that
# `overwrite` still recognises the demo folders made then.
README_MARKER = "SYNTHETIC DEMO DATASET made by demo_data.build_demo_dataset"

# Demographics, OASIS-1-like (see the module docstring).
AGE_BANDS = ((0.30, 18, 30), (0.22, 30, 60), (0.48, 60, 96))  # (probability, youngest, oldest)
FEMALE_PROBABILITY = 0.62
DEMENTIA_AGES, DEMENTIA_PROBABILITIES = (60, 96), (0.1, 0.9)  # P(CDR > 0), 0 below 60
DEMENTED_CDR_LEVELS, DEMENTED_CDR_PROBABILITIES = (0.5, 1.0, 2.0), (0.68, 0.26, 0.06)
MMSE_BY_CDR = {0.0: (29.0, 1.0), 0.5: (26.0, 2.5), 1.0: (21.0, 3.5), 2.0: (15.0, 4.0)}  # mean, sd

# Ranges of the per-subject random variation (see the module docstring for the maths).
SIZE_RANGE = (0.92, 1.08)
SEX_SIZE_FACTOR = {"F": 0.978, "M": 1.022}
ANISOTROPY = 0.03
ROTATION_DEGREES = 4.0
SHIFT_MM = 2.0
COARSE_GRID_POINTS, COARSE_DISPLACEMENT_MM = 6, 3.0
FINE_GRID_POINTS, FINE_DISPLACEMENT_MM = 12, 1.2
VENTRICLE_SMOOTHING_MM = 5.0
VENTRICLE_STEPS = 4
SULCUS_TISSUE_LEVEL = 0.8  # below this GM + WM, a voxel connected to the outside is outer CSF
# Ageing: m = young + age * A + cdr * CDR + N(0, sd^2) clipped; delta likewise, clipped at 0.
AGEING_AGES = (18, 96)  # the ageing curve A = ((age - 18) / 78)^2 runs from 0 to 1 over these
VENTRICLE_CHANGE_MM = {"young": -1.5, "age": 6.0, "cdr": 1.5, "sd": 0.75}
VENTRICLE_CHANGE_LIMITS_MM = (-2.5, 7.5)
CORTICAL_THINNING_MM = {"young": 0.0, "age": 1.0, "cdr": 0.3, "sd": 0.15}
TISSUE_CONTRAST_RANGE = (-0.05, 0.08)
GAMMA_RANGE = (0.9, 1.5)
BIAS_GRID_POINTS, BIAS_SIGMA_RANGE, BIAS_LOG_LIMIT = 4, (0.04, 0.1), 0.2
NOISE_SIGMA_RANGE = (0.01, 0.04)
WHITE_LEVEL_RANGE = (0.85, 1.0)


@dataclass(frozen=True)
class Template:
    """The MNI152 volumes cropped to the brain, in RAS voxel order (1 mm voxels).

    t1, grey_matter, white_matter, brain: (X, Y, Z) uint8, 0..255 (brain is 0 or 255).
    centre: (3,) float64, voxel coordinates of the centre of the brain's bounding box.
    ventricle_push: (3, Xv, Yv, Zv) float32, the unit-peak field g of the module docstring,
        on a box of the template whose voxel (0, 0, 0) is at `ventricle_origin` (3,).
    outer_depth: (X, Y, Z) float32, d of the module docstring: mm from each voxel to the
        nearest voxel of outer CSF or background (0 there).
    tissue_t1: (3,) float64, the median T1 in [0, 1] of pure CSF, grey and white matter
        (voxels of probability > 0.9), the mu_csf, mu_gm, mu_wm of the module docstring.
    """

    t1: np.ndarray
    grey_matter: np.ndarray
    white_matter: np.ndarray
    brain: np.ndarray
    centre: np.ndarray
    ventricle_push: np.ndarray
    ventricle_origin: np.ndarray
    outer_depth: np.ndarray
    tissue_t1: np.ndarray

    @property
    def intracranial_volume_mm3(self) -> int:
        """Volume of the brain mask (1 mm voxels), which holds the brain and its CSF."""
        return int(np.count_nonzero(self.brain))


@dataclass(frozen=True)
class Demographics:
    """One synthetic subject's OASIS-1 style demographics.

    age: years, 18..96; sex: "F" or "M"; cdr: Clinical Dementia Rating 0, 0.5, 1 or 2;
    mmse: Mini-Mental State Examination score 0..30.
    """

    age: int
    sex: str
    cdr: float
    mmse: int


@dataclass(frozen=True)
class SubjectVariation:
    """The random draws that make one synthetic subject (symbols of the module docstring).

    size: (3,) s_i; rotation_degrees: (3,) Euler angles (x, y, z); shift_mm: (3,) t;
    coarse_displacement: (3, 6, 6, 6) and fine_displacement: (3, 12, 12, 12) spline control
    values in mm; ventricle_change_mm: m; cortical_thinning_mm: delta; tissue_contrast: k;
    gamma; bias_control: (4, 4, 4) log-gain control values; noise_sigma: sigma; white_level: w.
    """

    size: np.ndarray
    rotation_degrees: np.ndarray
    shift_mm: np.ndarray
    coarse_displacement: np.ndarray
    fine_displacement: np.ndarray
    ventricle_change_mm: float
    cortical_thinning_mm: float
    tissue_contrast: float
    gamma: float
    bias_control: np.ndarray
    noise_sigma: float
    white_level: float


@dataclass(frozen=True)
class SyntheticSubject:
    """One synthetic subject as `synthesize_subject` makes it.

    images: (32, 256, 256) uint8 axial slices; classes: (32, 256, 256) uint8 tissue classes
    0..3 (background, CSF, grey matter, white matter); demographics: what its anatomy follows;
    variation: every random draw that made it.
    """

    images: np.ndarray
    classes: np.ndarray
    demographics: Demographics
    variation: SubjectVariation


def template_files() -> dict[str, Path]:
    """Paths of the MNI152 2009a T1, grey- and white-matter maps inside the nilearn package.

    These are the files `nilearn.datasets.load_mni152_template` and its `_gm_`/`_wm_` siblings
    read; finding them this way avoids importing `nilearn.datasets` (seconds, and not needed).
    """
    import nilearn  # the package itself imports in milliseconds

    data_folder = Path(nilearn.__file__).parent / "datasets" / "data"
    files = {
        name: data_folder / f"mni_icbm152_{code}_tal_nlin_sym_09a_converted.nii.gz"
        for name, code in (("t1", "t1"), ("grey_matter", "gm"), ("white_matter", "wm"))
    }
    missing = [str(path) for path in files.values() if not path.is_file()]
    if missing:
        raise FileNotFoundError(
            f"nilearn {nilearn.__version__} does not ship the MNI152 2009a template files "
            f"{', '.join(missing)}; install nilearn>=0.11,<0.15"
        )
    return files


def _read_volume(path: Path) -> np.ndarray:
    """(X, Y, Z) uint8 volume in RAS voxel order, scaled so that its maximum is 255."""
    import nibabel  # only building the demo reads NIfTI

    data = nibabel.as_closest_canonical(nibabel.load(path)).get_fdata(dtype=np.float32)
    if data.ndim != 3 or data.max() <= 0:
        raise ValueError(f"{path}: expected a non-empty 3-D volume, got shape {data.shape}")
    return np.rint(data * (255 / data.max())).astype(np.uint8)


@functools.lru_cache(maxsize=1)
def load_template() -> Template:
    """Load the MNI152 2009a T1 and tissue maps that nilearn ships (no network access).

    Cached: the arrays are shared between calls and read-only.
    """
    volumes = {name: _read_volume(path) for name, path in template_files().items()}
    if len({volume.shape for volume in volumes.values()}) != 1:
        shapes = {name: volume.shape for name, volume in volumes.items()}
        raise ValueError(f"MNI152 template files in nilearn differ in shape: {shapes}")
    brain = volumes["t1"] > 0
    crop = _bounding_box(brain, margin=2)
    t1, grey_matter, white_matter = (volumes[name][crop] for name in volumes)
    brain = brain[crop]
    brain_voxels = np.argwhere(brain)
    ventricle_push, ventricle_origin = _ventricle_push_field(
        _ventricle_mask(brain, grey_matter, white_matter)
    )
    template = Template(
        t1=t1,
        grey_matter=grey_matter,
        white_matter=white_matter,
        brain=brain.astype(np.uint8) * 255,
        centre=(brain_voxels.min(axis=0) + brain_voxels.max(axis=0)) / 2,
        ventricle_push=ventricle_push,
        ventricle_origin=ventricle_origin,
        outer_depth=_outer_depth(grey_matter, white_matter),
        tissue_t1=_tissue_t1(t1, brain, grey_matter, white_matter),
    )
    for array in vars(template).values():
        array.setflags(write=False)
    return template


def _bounding_box(mask: np.ndarray, margin: int) -> tuple[slice, ...]:
    """Slices of the smallest box holding the True voxels of a (X, Y, Z) mask, plus a margin."""
    indices = np.argwhere(mask)
    lower = np.maximum(indices.min(axis=0) - margin, 0)
    upper = np.minimum(indices.max(axis=0) + 1 + margin, mask.shape)
    return tuple(slice(int(a), int(b)) for a, b in zip(lower, upper, strict=True))


def _ventricle_mask(
    brain: np.ndarray, grey_matter: np.ndarray, white_matter: np.ndarray
) -> np.ndarray:
    """(X, Y, Z) bool: the largest CSF component (GM + WM < 50%) not touching the brain surface.

    The CSF around the brain and in the sulci touches the background; the lateral ventricles
    are the largest CSF region enclosed by tissue.
    """
    csf = brain & (grey_matter.astype(np.int16) + white_matter < 128)
    labels, count = ndimage.label(csf)
    surface_labels = np.unique(labels[ndimage.binary_dilation(~brain) & csf])
    sizes = ndimage.sum_labels(csf, labels, index=np.arange(1, count + 1))
    sizes[surface_labels[surface_labels > 0] - 1] = 0
    if not sizes.any():
        raise ValueError("MNI152 template from nilearn: found no ventricles in its tissue maps")
    return labels == np.argmax(sizes) + 1


def _ventricle_push_field(ventricles: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Unit-peak gradient of the smoothed ventricle mask, on a box around the ventricles.

    Returns ((3, Xv, Yv, Zv) float32 field g, (3,) int voxel origin of the box).
    """
    box = _bounding_box(ventricles, margin=int(4 * VENTRICLE_SMOOTHING_MM))
    smoothed = ndimage.gaussian_filter(ventricles[box].astype(np.float32), VENTRICLE_SMOOTHING_MM)
    gradient = np.stack(np.gradient(smoothed))
    gradient /= np.sqrt((gradient**2).sum(axis=0)).max()
    return gradient.astype(np.float32), np.array([s.start for s in box])


def _outer_depth(grey_matter: np.ndarray, white_matter: np.ndarray) -> np.ndarray:
    """(X, Y, Z) float32 mm from each voxel to the nearest voxel of outer CSF or background.

    Outer CSF and background are the voxels with GM + WM < SULCUS_TISSUE_LEVEL that connect to
    the volume's corner (background, which the crop's margin puts there). The level is above
    50% because the averaged template's sulci are mostly partial-volume CSF; the enclosed CSF of
    the ventricles is not outer, so the cortex is thinned from the pial side only.
    """
    not_tissue = grey_matter.astype(np.int16) + white_matter < 255 * SULCUS_TISSUE_LEVEL
    labels, _ = ndimage.label(not_tissue)
    outer = labels == labels[0, 0, 0]
    return ndimage.distance_transform_edt(~outer).astype(np.float32)


def _tissue_t1(
    t1: np.ndarray, brain: np.ndarray, grey_matter: np.ndarray, white_matter: np.ndarray
) -> np.ndarray:
    """(3,) median T1 in [0, 1] of the voxels that are > 90% CSF, grey and white matter."""
    grey, white = grey_matter.astype(np.int16), white_matter.astype(np.int16)
    pure_level = 0.9 * 255
    pure = [brain & (255 - grey - white > pure_level), grey > pure_level, white > pure_level]
    return np.array([np.median(t1[voxels]) / 255 for voxels in pure])


def ageing_curve(age: float) -> float:
    """A = ((age - 18) / 78)^2, clipped to [0, 1]: 0 at 18, 0.08 at 40, 0.4 at 67, 1 at 96.

    Brain ageing accelerates: ventricles and sulci change little before 50 and fast after 70.
    """
    youngest, oldest = AGEING_AGES
    return float(np.clip((age - youngest) / (oldest - youngest), 0, 1) ** 2)


def age_at_quantile(quantile: float) -> int:
    """The age whose cumulative probability under `AGE_BANDS` is `quantile` in [0, 1), rounded
    to whole years: the bands' probabilities p_k stack up to cumulative c_k, and u in
    [c_{k-1}, c_k) maps linearly onto band k's years."""
    if not 0 <= quantile < 1:
        raise ValueError(f"quantile must be in [0, 1), got {quantile}")
    upper = np.cumsum([probability for probability, *_ in AGE_BANDS])
    band = min(int(np.searchsorted(upper, quantile, side="right")), len(AGE_BANDS) - 1)
    probability, youngest, oldest = AGE_BANDS[band]
    fraction = np.clip((quantile - (upper[band] - probability)) / probability, 0.0, 1.0)
    return int(np.rint(youngest + fraction * (oldest - youngest)))


def split_age_quantiles(count: int, seed: int, split: str) -> np.ndarray:
    """(count,) stratified age quantiles for the people of one split: person i gets
    (pi_i + v_i) / count, pi a random permutation of 0..count-1 and v_i ~ U(0, 1), so the split
    has one person in each of `count` equally likely strata of the age distribution (in random
    order) and even 8 test people span the ages. Drawn from their own stream of (`seed`, the
    split), apart from every person's."""
    rng = np.random.default_rng([seed, 0, SPLITS.index(split)])
    return (rng.permutation(count) + rng.uniform(size=count)) / count


def draw_demographics(rng: np.random.Generator, age_quantile: float | None = None) -> Demographics:
    """Draw an OASIS-1-like age, sex, CDR and MMSE (the module docstring gives the model); with
    `age_quantile`, the age is `age_at_quantile(age_quantile)` instead of a free draw.

    Always makes the same number of draws, whatever they give.
    """
    band = rng.choice(len(AGE_BANDS), p=[probability for probability, *_ in AGE_BANDS])
    _, youngest, oldest = AGE_BANDS[band]
    age = int(np.rint(rng.uniform(youngest, oldest)))
    if age_quantile is not None:
        age = age_at_quantile(age_quantile)
    sex = "F" if rng.uniform() < FEMALE_PROBABILITY else "M"
    dementia_probability = np.interp(age, DEMENTIA_AGES, DEMENTIA_PROBABILITIES, left=0.0)
    demented = rng.uniform() < dementia_probability
    severity = float(rng.choice(DEMENTED_CDR_LEVELS, p=DEMENTED_CDR_PROBABILITIES))
    cdr = severity if demented else 0.0
    mmse_mean, mmse_sd = MMSE_BY_CDR[cdr]
    mmse = int(np.clip(np.rint(rng.normal(mmse_mean, mmse_sd)), 0, 30))
    return Demographics(age=age, sex=sex, cdr=cdr, mmse=mmse)


def _ageing_change(
    coefficients: dict[str, float], demographics: Demographics, rng: np.random.Generator
) -> float:
    """young + age * A(age) + cdr * CDR + N(0, sd^2), the coefficients named as in the dict."""
    return (
        coefficients["young"]
        + coefficients["age"] * ageing_curve(demographics.age)
        + coefficients["cdr"] * demographics.cdr
        + rng.normal(0, coefficients["sd"])
    )


def draw_subject_variation(
    rng: np.random.Generator, demographics: Demographics
) -> SubjectVariation:
    """Draw one subject's shape, ageing, contrast, bias and noise parameters.

    The size follows the sex, the ventricle change m and the cortical thinning delta follow the
    age and CDR; the number of draws never depends on the demographics.
    """
    coarse_shape = (3, COARSE_GRID_POINTS, COARSE_GRID_POINTS, COARSE_GRID_POINTS)
    fine_shape = (3, FINE_GRID_POINTS, FINE_GRID_POINTS, FINE_GRID_POINTS)
    size = rng.uniform(*SIZE_RANGE) * SEX_SIZE_FACTOR[demographics.sex]
    return SubjectVariation(
        size=size * (1 + rng.uniform(-ANISOTROPY, ANISOTROPY, size=3)),
        rotation_degrees=rng.uniform(-ROTATION_DEGREES, ROTATION_DEGREES, size=3),
        shift_mm=rng.uniform(-SHIFT_MM, SHIFT_MM, size=3),
        coarse_displacement=rng.normal(0, COARSE_DISPLACEMENT_MM, size=coarse_shape),
        fine_displacement=rng.normal(0, FINE_DISPLACEMENT_MM, size=fine_shape),
        ventricle_change_mm=float(
            np.clip(
                _ageing_change(VENTRICLE_CHANGE_MM, demographics, rng), *VENTRICLE_CHANGE_LIMITS_MM
            )
        ),
        cortical_thinning_mm=max(_ageing_change(CORTICAL_THINNING_MM, demographics, rng), 0.0),
        tissue_contrast=float(rng.uniform(*TISSUE_CONTRAST_RANGE)),
        gamma=float(rng.uniform(*GAMMA_RANGE)),
        bias_control=rng.normal(0, rng.uniform(*BIAS_SIGMA_RANGE), size=(BIAS_GRID_POINTS,) * 3),
        noise_sigma=float(rng.uniform(*NOISE_SIGMA_RANGE)),
        white_level=float(rng.uniform(*WHITE_LEVEL_RANGE)),
    )


def output_plane_axes(step: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Subject-space axes (mm, RAS, around the brain centre) of every `step`-th output pixel.

    Returns x (n + 1,), y (n + 1,), z (32,) float64 with n = 256 / step: the positions of
    columns and rows 0, step, ..., 256 (the last one lies one step past the image, so that
    interpolation covers every pixel) and the heights of the 32 axial planes. Column 0 is the
    subject's left (smallest x), row 0 is anterior (largest y): the neurological view.
    """
    pixels = np.arange(0, IMAGE_SIZE + 1, step, dtype=np.float64)
    offsets_mm = (pixels - (IMAGE_SIZE - 1) / 2) * PIXEL_SPACING_MM
    heights_mm = np.linspace(*SLICE_RANGE_MM, SLICES_PER_SUBJECT)
    return offsets_mm, -offsets_mm, heights_mm


def spline_weights(control_count: int, positions_mm: np.ndarray) -> np.ndarray:
    """(len(positions), control_count) weights of a cubic spline through evenly spaced knots.

    The knots cover [-120, 120] mm; row i holds the weights that give the spline's value at
    positions_mm[i] from the knot values. Positions outside the knots are clamped to them.
    """
    knots = np.linspace(-FIELD_HALF_WIDTH_MM, FIELD_HALF_WIDTH_MM, control_count)
    clamped = np.clip(positions_mm, -FIELD_HALF_WIDTH_MM, FIELD_HALF_WIDTH_MM)
    return CubicSpline(knots, np.eye(control_count))(clamped)


def spline_field(
    control_values: np.ndarray, x_mm: np.ndarray, y_mm: np.ndarray, z_mm: np.ndarray
) -> np.ndarray:
    """Tensor-product cubic spline through (..., n, n, n) control values indexed (x, y, z).

    Evaluated on the grid of the axes x (X,), y (Y,), z (Z,) -> (..., Z, Y, X) planes:
    f(x_i, y_j, z_k) = sum_abc C_abc w_a(x_i) w_b(y_j) w_c(z_k).
    """
    n = control_values.shape[-1]
    # Three small contractions with numpy's own loops, not BLAS: fast, single-threaded and
    # bit-identical on any machine.
    along_x = np.einsum("...abc,ia->...ibc", control_values, spline_weights(n, x_mm))
    along_y = np.einsum("...ibc,jb->...ijc", along_x, spline_weights(n, y_mm))
    return np.einsum("...ijc,kc->...kji", along_y, spline_weights(n, z_mm))


def subject_to_template(
    axes_mm: tuple[np.ndarray, np.ndarray, np.ndarray],
    variation: SubjectVariation,
    template: Template,
) -> np.ndarray:
    """T(p) on the grid of subject axes x (X,), y (Y,), z (Z,) mm -> (3, Z, Y, X) voxel coords."""
    x_mm, y_mm, z_mm = axes_mm
    z, y, x = np.meshgrid(z_mm, y_mm, x_mm, indexing="ij")
    points_mm = np.stack([x, y, z])
    rotation = Rotation.from_euler("xyz", variation.rotation_degrees, degrees=True).as_matrix()
    scaled = points_mm / variation.size[:, None, None, None]
    coordinates = np.einsum("ij,j...->i...", rotation, scaled)
    coordinates += (template.centre + variation.shift_mm)[:, None, None, None]
    coordinates += spline_field(variation.coarse_displacement, *axes_mm)
    coordinates += spline_field(variation.fine_displacement, *axes_mm)
    return push_ventricles(coordinates, variation.ventricle_change_mm, template)


def push_ventricles(coordinates: np.ndarray, change_mm: float, template: Template) -> np.ndarray:
    """Move template coordinates (3, ...) by change_mm along g, in VENTRICLE_STEPS Euler steps.

    q <- q + (m / N) g(q), N times: each step is a small, invertible warp, so unlike one step
    of m g the composition cannot fold the tissue next to the ventricles. g is 0 outside its
    box, so only the points inside it are moved.
    """
    box_shape = np.array(template.ventricle_push.shape[1:])[:, None]
    flat = coordinates.reshape(3, -1)
    local = flat - template.ventricle_origin[:, None]
    in_box = np.all((local >= 0) & (local <= box_shape - 1), axis=0)
    moving = local[:, in_box]
    for _ in range(VENTRICLE_STEPS):
        push = [
            ndimage.map_coordinates(field, moving, order=1, mode="constant", cval=0.0)
            for field in template.ventricle_push
        ]
        moving = moving + (change_mm / VENTRICLE_STEPS) * np.stack(push)
    pushed = flat.copy()
    pushed[:, in_box] = moving + template.ventricle_origin[:, None]
    return pushed.reshape(coordinates.shape)


def upsample_plane_grid(coarse: np.ndarray, step: int) -> np.ndarray:
    """Bilinear interpolation from every `step`-th pixel to every pixel of each plane.

    coarse: (..., n + 1, n + 1) values at pixels 0, step, ..., n * step
    -> (..., n * step, n * step) float32.
    """
    size = (coarse.shape[-1] - 1) * step
    positions = np.arange(size) / step
    lower = positions.astype(np.int64)
    upper_weight = (positions - lower).astype(np.float32)
    lower_weight = 1 - upper_weight
    coarse = coarse.astype(np.float32)
    rows = (
        coarse[..., lower, :] * lower_weight[:, None]
        + coarse[..., lower + 1, :] * (upper_weight[:, None])
    )
    return rows[..., lower] * lower_weight + rows[..., lower + 1] * upper_weight


def sample_template(
    template: Template, coordinates: np.ndarray
) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Trilinear samples of the template at voxel coordinates (3, *shape), scaled to [0, 1].

    Returns (support, samples): support (*shape) bool marks the K points whose brain sample
    is > 0, and samples maps "brain", "t1", "grey_matter", "white_matter" to (K,) float32
    values there and "outer_depth" to (K,) float32 mm. Every other point is background (its
    brain and T1 samples are exactly 0), so the other maps are not sampled there.
    """
    brain = ndimage.map_coordinates(
        template.brain, coordinates, output=np.float32, order=1, mode="constant", cval=0.0
    )
    support = brain > 0
    support_coordinates = coordinates[:, support]
    samples = {"brain": brain[support] / 255}
    for name, scale in (
        ("t1", 255),
        ("grey_matter", 255),
        ("white_matter", 255),
        ("outer_depth", 1),
    ):
        volume = getattr(template, name)
        values = ndimage.map_coordinates(
            volume, support_coordinates, output=np.float32, order=1, mode="constant", cval=0.0
        )
        samples[name] = values / scale
    return support, samples


def thin_cortex(
    samples: dict[str, np.ndarray], thinning_mm: float, tissue_t1: np.ndarray
) -> dict[str, np.ndarray]:
    """Turn the tissue within `thinning_mm` of the outer CSF into CSF, image and masks alike.

    samples: (K,) template samples (`sample_template`); tissue_t1: (3,) mu_csf, mu_gm, mu_wm.
    With c = clip(delta - d, 0, 1) of the sampled outer depth d, grey and white matter lose the
    fraction c of their probability to CSF, and the T1 changes as a mixture of pure tissues:
    I' = I - c (P_gm (mu_gm - mu_csf) + P_wm (mu_wm - mu_csf)). Returns new samples.
    """
    converted = np.clip(thinning_mm - samples["outer_depth"], 0, 1)
    csf_t1, grey_t1, white_t1 = tissue_t1
    grey, white = samples["grey_matter"], samples["white_matter"]
    darkening = converted * (grey * (grey_t1 - csf_t1) + white * (white_t1 - csf_t1))
    return samples | {
        "t1": np.clip(samples["t1"] - darkening, 0, None).astype(np.float32),
        "grey_matter": grey * (1 - converted),
        "white_matter": white * (1 - converted),
    }


def tissue_classes(samples: dict[str, np.ndarray]) -> np.ndarray:
    """(K,) uint8 class 0..3 = argmax(background, CSF, GM, WM) of (K,) sampled probabilities."""
    grey, white, brain = samples["grey_matter"], samples["white_matter"], samples["brain"]
    csf = np.maximum(brain - grey - white, 0)
    return np.argmax(np.stack([1 - brain, csf, grey, white]), axis=0).astype(np.uint8)


def scanner_intensities(
    samples: dict[str, np.ndarray],
    log_bias: np.ndarray,
    variation: SubjectVariation,
    rng: np.random.Generator,
) -> np.ndarray:
    """(K,) uint8 grey values of a subject's K brain pixels (all its slices together).

    samples: (K,) template samples at those pixels; log_bias: (K,) b(p). Applies the tissue
    contrast, gamma, bias field and Rician noise of the module docstring, then maps the 99.5th
    percentile to 255 * white_level.
    """
    contrast = 1 + variation.tissue_contrast * (samples["white_matter"] - samples["grey_matter"])
    intensity = np.clip(samples["t1"] * contrast, 0, None) ** variation.gamma
    intensity *= np.exp(np.clip(log_bias, -BIAS_LOG_LIMIT, BIAS_LOG_LIMIT))
    noise_real, noise_imaginary = rng.standard_normal((2, intensity.size), dtype=np.float32)
    intensity = np.hypot(
        intensity + variation.noise_sigma * noise_real, variation.noise_sigma * noise_imaginary
    )
    scale = 255 * variation.white_level / np.percentile(intensity, 99.5)
    return np.rint(np.clip(intensity * scale, 0, 255)).astype(np.uint8)


def synthesize_subject(
    template: Template,
    case_number: int,
    seed: int,
    demographics: Demographics | None = None,
    age_quantile: float | None = None,
) -> SyntheticSubject:
    """Make one synthetic subject: 32 images and tissue classes, its demographics and draws.

    Background pixels (class 0) are 0 in the image, as in skull-stripped scans. The age is
    drawn at `age_quantile` when given (`draw_demographics`). `demographics` replaces the drawn
    ones (they are drawn either way, so every other random draw of the subject stays the same:
    the same person, at another age or CDR).
    """
    rng = np.random.default_rng([seed, case_number])
    drawn_demographics = draw_demographics(rng, age_quantile)
    if demographics is None:
        demographics = drawn_demographics
    variation = draw_subject_variation(rng, demographics)
    coarse_axes = output_plane_axes(COARSE_GRID_STEP)
    coordinates = upsample_plane_grid(
        subject_to_template(coarse_axes, variation, template), COARSE_GRID_STEP
    )
    log_bias = upsample_plane_grid(
        spline_field(variation.bias_control, *coarse_axes), COARSE_GRID_STEP
    )
    support, samples = sample_template(template, coordinates)
    samples = thin_cortex(samples, variation.cortical_thinning_mm, template.tissue_t1)
    support_classes = tissue_classes(samples)
    classes = np.zeros(support.shape, dtype=np.uint8)
    classes[support] = support_classes
    brain_pixels = classes > 0
    brain_samples = {name: values[support_classes > 0] for name, values in samples.items()}
    images = np.zeros(support.shape, dtype=np.uint8)
    images[brain_pixels] = scanner_intensities(
        brain_samples, log_bias[brain_pixels], variation, rng
    )
    return SyntheticSubject(images, classes, demographics, variation)


def table_row(case_number: int, subject: SyntheticSubject, template: Template) -> dict[str, str]:
    """The subject's row of oasis_cross-sectional.csv, keyed by CROSS_SECTIONAL_COLUMNS.

    ID is the PNG tree's subject id ("001"). eTIV = V_template * s_x s_y s_z in cm^3 (the
    template's brain mask stands for the intracranial volume, as the template has no skull),
    ASF = 1 / (s_x s_y s_z) (the volume scaling of the subject onto the template, the atlas
    here), nWBV = the fraction of the subject's brain-mask pixels in its 32 slices that are grey
    or white matter. Education and SES are left blank; Delay is N/A (no rescan).
    """
    demographics = subject.demographics
    volume_scale = float(np.prod(subject.variation.size))
    brain_pixels = np.count_nonzero(subject.classes)
    tissue_pixels = np.count_nonzero(subject.classes >= 2)
    return {
        "ID": f"{case_number:03d}",
        "M/F": demographics.sex,
        "Hand": "R",
        "Age": str(demographics.age),
        "Educ": "",
        "SES": "",
        "MMSE": str(demographics.mmse),
        "CDR": f"{demographics.cdr:g}",
        "eTIV": str(round(template.intracranial_volume_mm3 * volume_scale / 1000)),
        "nWBV": f"{tissue_pixels / brain_pixels:.3f}",
        "ASF": f"{1 / volume_scale:.3f}",
        "Delay": "N/A",
    }


def write_subject(
    images: np.ndarray, classes: np.ndarray, case_number: int, split: str, root: Path
) -> None:
    """Write one subject's 32 images and masks as keras_png_slices PNGs under `root`."""
    for slice_index in range(SLICES_PER_SUBJECT):
        name = f"{case_number:03d}_slice_{slice_index}.nii.png"
        Image.fromarray(images[slice_index]).save(root / png_folder(split) / f"case_{name}")
        Image.fromarray(classes[slice_index] * np.uint8(MASK_GREY_STEP)).save(
            root / png_folder(split, masks=True) / f"seg_{name}"
        )


_worker_template: Template | None = None


def _set_worker_template(template: Template) -> None:
    """Process-pool initializer: keep the template for every subject this worker makes."""
    global _worker_template
    _worker_template = template


def _make_subject(
    template: Template,
    case_number: int,
    split: str,
    age_quantile: float,
    seed: int,
    root: Path,
) -> dict[str, str]:
    """Synthesize and write one subject; return its row of the demographics table."""
    subject = synthesize_subject(template, case_number, seed, age_quantile=age_quantile)
    write_subject(subject.images, subject.classes, case_number, split, root)
    return table_row(case_number, subject, template)


def _make_subject_in_worker(
    case_number: int, split: str, age_quantile: float, seed: int, root: Path
) -> dict[str, str]:
    """`_make_subject` with the worker's template."""
    return _make_subject(_worker_template, case_number, split, age_quantile, seed, root)


def split_case_numbers(subject_counts: dict[str, int]) -> dict[str, range]:
    """Consecutive case numbers per split, starting at 1: train, then validate, then test."""
    ranges, first = {}, 1
    for split in SPLITS:
        ranges[split] = range(first, first + subject_counts[split])
        first += subject_counts[split]
    return ranges


def build_demo_dataset(
    out_dir,
    train_subjects: int = 64,
    validate_subjects: int = 8,
    test_subjects: int = 8,
    seed: int = 0,
    workers: int = 2,
    overwrite: bool = False,
) -> Path:
    """Write the synthetic demo dataset in the keras_png_slices layout; return its folder.

    Makes `train_subjects + validate_subjects + test_subjects` subjects of 32 slices each
    (case numbers 001... in that order) with `workers` processes (1 = in this process). The
    dataset is built in a hidden sibling folder and renamed to `out_dir` at the end, so an
    interrupted build never leaves a partial dataset at `out_dir`. A non-empty `out_dir` is
    refused unless `overwrite` is set and it is a demo dataset made by this function.
    """
    subject_counts = {"train": train_subjects, "validate": validate_subjects, "test": test_subjects}
    _check_arguments(subject_counts, seed, workers)
    out_dir = Path(out_dir).expanduser().absolute()
    replace_existing = _check_output_folder(out_dir, overwrite)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = _new_sibling_folder(out_dir, "building")
    try:
        case_numbers = split_case_numbers(subject_counts)
        rows = _write_subjects(staging, case_numbers, seed, workers)
        _write_demographics_table(staging, rows)
        _write_readme(staging, case_numbers, seed)
        _move_into_place(staging, out_dir, replace_existing)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return out_dir


def _check_arguments(subject_counts: dict[str, int], seed: int, workers: int) -> None:
    """Raise ValueError naming the first bad argument of `build_demo_dataset`."""
    for split, count in subject_counts.items():
        minimum = 1 if split == "train" else 0
        if not isinstance(count, int) or isinstance(count, bool) or count < minimum:
            raise ValueError(f"{split}_subjects must be an integer >= {minimum}, got {count!r}")
    total = sum(subject_counts.values())
    if total > MAX_CASE_NUMBER:
        raise ValueError(
            f"train_subjects + validate_subjects + test_subjects must be at most "
            f"{MAX_CASE_NUMBER} (three-digit case ids), got {total}"
        )
    if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
        raise ValueError(f"seed must be an integer >= 0, got {seed!r}")
    if not isinstance(workers, int) or isinstance(workers, bool) or workers < 1:
        raise ValueError(f"workers must be an integer >= 1, got {workers!r}")


def _check_output_folder(out_dir: Path, overwrite: bool) -> bool:
    """Decide whether `out_dir` may be written; return True if an old demo must be replaced.

    Raises ValueError if `out_dir` is a file, or a non-empty folder while `overwrite` is off,
    or (with `overwrite`) a non-empty folder that is not a demo dataset made here or that holds
    anything besides the dataset (hidden files such as `.complete` are allowed, hidden
    folders such as `.git` are not).
    """
    if not out_dir.exists():
        return False
    if not out_dir.is_dir():
        raise ValueError(f"{out_dir} exists and is not a folder; choose another output folder")
    entries = sorted(out_dir.iterdir())
    if not entries:
        return False
    if not overwrite:
        raise ValueError(
            f"{out_dir} is not empty; choose an empty or new folder, or pass overwrite=True "
            "to replace a demo dataset made by build_demo_dataset"
        )
    readme = out_dir / "README.txt"
    if not readme.is_file() or README_MARKER not in readme.read_text(errors="replace"):
        raise ValueError(
            f"{out_dir} is not a demo dataset made by build_demo_dataset (its README.txt lacks "
            f"the line {README_MARKER!r}); refusing to delete it"
        )
    known = {"README.txt", CROSS_SECTIONAL_FILE} | {
        png_folder(s, masks) for s in SPLITS for masks in (False, True)
    }
    unknown = [
        path.name
        for path in entries
        if path.name not in known and not (path.name.startswith(".") and path.is_file())
    ]
    if unknown:
        raise ValueError(
            f"{out_dir} holds files that build_demo_dataset did not make ({', '.join(unknown)}); "
            "refusing to delete them"
        )
    return True


def _write_subjects(
    root: Path, case_numbers: dict[str, range], seed: int, workers: int
) -> list[dict[str, str]]:
    """Create the six split folders under `root` and fill them, one task per subject.

    Returns the subjects' rows of the demographics table, in case order.
    """
    for split in SPLITS:
        (root / png_folder(split)).mkdir()
        (root / png_folder(split, masks=True)).mkdir()
    tasks = [
        (case, split, float(quantile))
        for split in SPLITS
        for case, quantile in zip(
            case_numbers[split],
            split_age_quantiles(len(case_numbers[split]), seed, split),
            strict=True,
        )
    ]
    template = load_template()
    if workers == 1:
        return [_make_subject(template, *task, seed, root) for task in tasks]
    # "spawn": forking a parent that has started TensorFlow or BLAS threads can deadlock.
    with concurrent.futures.ProcessPoolExecutor(
        max_workers=min(workers, len(tasks)),
        mp_context=multiprocessing.get_context("spawn"),
        initializer=_set_worker_template,
        initargs=(template,),
    ) as executor:
        futures = [executor.submit(_make_subject_in_worker, *task, seed, root) for task in tasks]
        try:
            for future in concurrent.futures.as_completed(futures):
                future.result()
        except BaseException:
            for future in futures:
                future.cancel()
            raise
    return [future.result() for future in futures]


def _write_demographics_table(root: Path, rows: list[dict[str, str]]) -> None:
    """Write the rows as oasis_cross-sectional.csv, with the OASIS-1 header, under `root`."""
    with (root / CROSS_SECTIONAL_FILE).open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=CROSS_SECTIONAL_COLUMNS, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)


def _write_readme(root: Path, case_numbers: dict[str, range], seed: int) -> None:
    """Write README.txt: synthetic, from the nilearn MNI152 template, not OASIS; parameters."""
    split_lines = [
        f"  {split:<9} {len(cases):>3} subjects, "
        + (f"cases {cases[0]:03d}-{cases[-1]:03d}" if cases else "no cases")
        + f", {len(cases) * SLICES_PER_SUBJECT} slices"
        for split, cases in case_numbers.items()
    ]
    parameter_lines = [
        f"  planes: {SLICES_PER_SUBJECT} axial, {SLICE_RANGE_MM[0]:+.0f} to "
        f"{SLICE_RANGE_MM[1]:+.0f} mm from the brain centre, {PIXEL_SPACING_MM} mm pixels",
        "  view: neurological, anterior at the top, the subject's left on the image's left",
        f"  size: x U{SIZE_RANGE}, per-axis anisotropy +-{ANISOTROPY}",
        f"  rotation: +-{ROTATION_DEGREES} degrees per axis; shift: +-{SHIFT_MM} mm per axis",
        f"  smooth displacement: cubic spline of N(0, {COARSE_DISPLACEMENT_MM} mm) on a "
        f"{COARSE_GRID_POINTS}^3 grid + N(0, {FINE_DISPLACEMENT_MM} mm) on a "
        f"{FINE_GRID_POINTS}^3 grid, over {2 * FIELD_HALF_WIDTH_MM:.0f} mm",
        f"  ventricles: moved m mm along the gradient of the ventricle mask smoothed by "
        f"{VENTRICLE_SMOOTHING_MM} mm (positive = enlarged), {_ageing_formula(VENTRICLE_CHANGE_MM)}"
        f" clipped to {VENTRICLE_CHANGE_LIMITS_MM}",
        "  cortical thinning: tissue within delta mm of the outer CSF becomes CSF, "
        f"delta = {_ageing_formula(CORTICAL_THINNING_MM)}, at least 0",
        f"  grey/white contrast change: U{TISSUE_CONTRAST_RANGE}; gamma: U{GAMMA_RANGE}",
        f"  bias field: exp(spline on a {BIAS_GRID_POINTS}^3 grid, sd U{BIAS_SIGMA_RANGE}, "
        f"clipped to +-{BIAS_LOG_LIMIT})",
        f"  Rician noise sd: U{NOISE_SIGMA_RANGE}; background 0; brain 99.5th percentile -> "
        f"255 x U{WHITE_LEVEL_RANGE}",
    ]
    demographics_lines = [
        "  age: whole years, uniform in a band (probability, youngest, oldest) of",
        f"    {AGE_BANDS}",
        f"  sex: F with probability {FEMALE_PROBABILITY}, else M (heads x{SEX_SIZE_FACTOR['F']} "
        f"and x{SEX_SIZE_FACTOR['M']})",
        f"  CDR: 0 below {DEMENTIA_AGES[0]}; then dementia with probability rising linearly "
        f"from {DEMENTIA_PROBABILITIES[0]} at {DEMENTIA_AGES[0]}",
        f"    to {DEMENTIA_PROBABILITIES[1]} at {DEMENTIA_AGES[1]}, with CDR "
        f"{DEMENTED_CDR_LEVELS} of probability {DEMENTED_CDR_PROBABILITIES}",
        "  MMSE: normal, rounded, clipped to [0, 30], with (mean, sd) by CDR",
        f"    {MMSE_BY_CDR}",
        f"  ageing curve A = ((age - {AGEING_AGES[0]}) / {AGEING_AGES[1] - AGEING_AGES[0]})^2",
    ]
    text = "\n".join(
        [
            README_MARKER,
            "",
            "SYNTHETIC DATA - NOT OASIS. Every image is derived from one brain template: the",
            "MNI152 2009a nonlinear symmetric T1 template and its grey/white matter probability",
            "maps, as shipped inside the nilearn Python package (Fonov et al., NeuroImage",
            "54:313-327, 2011). No OASIS or other subject's data were used. Use it to try the",
            "pipeline; never report results on it as results on real brains.",
            "",
            "Layout (that of the preprocessed OASIS PNG slices, keras_png_slices_data):",
            "  keras_png_slices_{train,validate,test}/case_NNN_slice_S.nii.png, 256x256 8-bit grey",
            "  keras_png_slices_seg_{train,validate,test}/seg_NNN_slice_S.nii.png, masks with",
            "  grey value 85 * class (0 background, 1 CSF, 2 grey matter, 3 white matter)",
            f"  {CROSS_SECTIONAL_FILE}: one row per subject with the OASIS-1 header; ID is the",
            "  case number NNN; Age, M/F, CDR, MMSE drawn, Hand R, Educ and SES blank, Delay N/A;",
            "  eTIV, ASF and nWBV measured on the synthetic brain (its tissue fraction in the",
            "  32 slices; the skull-stripped template's brain mask stands for the skull)",
            *split_lines,
            "",
            "How it was made (the docstring of brain_vqvae/data/demo.py gives the maths): each",
            "subject is the template resampled trilinearly through its own random transform, then",
            "given random scanner-like intensities. The mask is the argmax of the background, CSF,",
            "grey and white matter probabilities warped by the same transform. Every subject",
            "has an age, sex and CDR drawn like OASIS-1's, and its ventricles and cortex age",
            "with them (larger ventricles, wider sulci, thinner cortex). Demographics:",
            *demographics_lines,
            "Parameters:",
            *parameter_lines,
            "",
            f"Seed: {seed}. Subject n draws from numpy.random.default_rng([{seed}, n]); the same",
            "seed and subject counts give byte-identical files.",
            "",
        ]
    )
    (root / "README.txt").write_text(text)


def _ageing_formula(coefficients: dict[str, float]) -> str:
    """The text of young + age * A + cdr * CDR + N(0, sd^2), with the coefficients' values."""
    return (
        f"{coefficients['young']:+g} {coefficients['age']:+g} A {coefficients['cdr']:+g} CDR "
        f"+ N(0, {coefficients['sd']:g}^2)"
    )


def _new_sibling_folder(out_dir: Path, purpose: str) -> Path:
    """Create and return an empty hidden folder `.NAME.PURPOSE-RANDOM` beside `out_dir`.

    Made with the user's umask (unlike tempfile.mkdtemp, which makes folders only the owner
    can read), because the building folder becomes the dataset.
    """
    folder = out_dir.parent / f".{out_dir.name}.{purpose}-{secrets.token_hex(8)}"
    folder.mkdir()
    return folder


def _move_into_place(staging: Path, out_dir: Path, replace_existing: bool) -> None:
    """Rename the finished `staging` folder to `out_dir`, removing an old demo or empty folder."""
    if replace_existing:
        retired = _new_sibling_folder(out_dir, "old")
        out_dir.rename(retired / out_dir.name)
        staging.rename(out_dir)
        shutil.rmtree(retired)
        return
    if out_dir.exists():
        out_dir.rmdir()
    staging.rename(out_dir)
