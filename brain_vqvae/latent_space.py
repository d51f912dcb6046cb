"""Where slices sit in a trained VQ-VAE's latent space, and what each of its codes draws.

Every slice x gets two embeddings:

    code histogram   h_k = (1 / hw) sum_(i,j) [k(i, j) = k]   (K,)  the share of its h x w
                     code map given to code k; sum_k h_k = 1
    latent map       g(u, v) = mean of z_e(i, j) over block (u, v)   (G, G, D) flattened: the
                     encoder's pre-quantization vectors z_e (h x h x D, D = latent_dim)
                     averaged over a G x G grid of blocks, G = min(4, h)

The latent map keeps where things are. A mean of z_e over every position would not: most of a
slice's positions are background or brain whose vectors share one direction and differ mostly
in length, so their mean moves along a single line as the brain grows or shrinks, and its 2-D
projections show one thin curve (BENCHMARKS.md).

Each is projected to 2-D with PCA and/or t-SNE (perplexity min(30, (N - 1) / 3)) and drawn once
per grouping of the slices: split, slice position (inferior, middle or superior third of its
volume's slices), subject (the `top_subjects` subjects with most slices; the rest grey),
dataset (with several datasets), class label (MedMNIST), and CDR, age band and sex when
demographics are known. Each group of 3 or more points gets its 95% confidence ellipse: the set
(p - mu)^T C^-1 (p - mu) <= 5.991, the 95% quantile of chi-square with 2 degrees of freedom, for
the group's mean mu and covariance C.

How well a grouping separates is put in numbers: the silhouette score (Rousseeuw 1987; from -1
to 1, near 0 = groups overlap) of the groups in each embedding and in each 2-D projection, and
the codes whose usage differs most between the groups (one-way ANOVA F of h_k). `analyse`
writes into its output folder

    latent_<grouping>.png   one per grouping: rows = embeddings, columns = projections
    codebook.png            each code decoded alone (a code map filled with k; of a codebook
                            over 64, the 64 most used) and where the codes fall on a few real
                            slices
    latent.json             slice counts, groups, silhouette scores and distinctive codes
"""

from __future__ import annotations

import json
import math
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from matplotlib import colormaps
from matplotlib.cm import ScalarMappable
from matplotlib.colors import Normalize
from matplotlib.figure import Figure
from matplotlib.patches import Ellipse

from brain_vqvae.data import SPLITS, BrainSlices, DataError
from brain_vqvae.data.slices import capped_indices
from brain_vqvae.metrics import code_histograms
from brain_vqvae.model import decode_code_maps, encode_code_maps
from brain_vqvae.plotting import code_colormap, code_ticks, save_figure
from brain_vqvae.runs import load_training_data
from hyperparameters import Hyperparameters

CHI_SQUARE_95_2DOF = 5.991
UNGROUPED = "other"
UNKNOWN = "unknown"
EMBEDDINGS = {"code_histogram": "code histogram", "latent_map": "pooled pre-quantization map"}
LATENT_GRID = 4  # the latent map averages z_e over at most LATENT_GRID x LATENT_GRID blocks
METHODS = ("pca", "tsne")
POSITION_THIRDS = ("inferior third", "middle third", "superior third")
AGE_BANDS = ((0, 40, "age < 40"), (40, 60, "age 40-59"), (60, 75, "age 60-74"), (75, 200, "75+"))
DISTINCTIVE_CODES = 3
CODEBOOK_CODES_SHOWN = 64  # codebook.png decodes at most this many codes, the most used
ENCODE_CHUNK = 512
EXACT_TSNE_LIMIT = 200  # slices up to which exact t-SNE is faster than Barnes-Hut


# The slices -------------------------------------------------------------------------------


@dataclass(frozen=True)
class SliceTable:
    """The slices to embed, from one or more datasets, and what is known about each.

    `images` is (N, S, S) uint8; every entry of `columns` is an (N,) array: "dataset", "split",
    "subject", "class_label", "sex" (str; "" when unknown), "slice_index" (int), "age" and
    "cdr" (float; NaN when unknown).
    """

    images: np.ndarray
    columns: dict[str, np.ndarray]

    def __len__(self) -> int:
        return len(self.images)

    def subset(self, indices: np.ndarray) -> SliceTable:
        return SliceTable(
            self.images[indices], {name: values[indices] for name, values in self.columns.items()}
        )


def demographic_columns(subjects: np.ndarray, demographics: dict[str, dict]) -> dict:
    """Per-slice "age", "cdr" (float, NaN when unknown) and "sex" (str, "" when unknown) of
    the (N,) subject ids, from `BrainSlices.demographics` ({subject: {"age", "sex", "cdr"}})."""

    def value(subject: str, key: str):
        return demographics.get(str(subject), {}).get(key)

    def number(subject: str, key: str) -> float:
        found = value(subject, key)
        return np.nan if found is None else float(found)

    return {
        "age": np.array([number(subject, "age") for subject in subjects], dtype=np.float64),
        "cdr": np.array([number(subject, "cdr") for subject in subjects], dtype=np.float64),
        "sex": np.array([value(subject, "sex") or "" for subject in subjects], dtype=str),
    }


def slice_table(slices: BrainSlices, splits: tuple[str, ...], dataset_name: str) -> SliceTable:
    """The slices of `splits` of one loaded dataset as a `SliceTable`."""
    parts_with_splits = [
        (split, slices.splits[split]) for split in splits if len(slices.splits.get(split, ())) > 0
    ]
    if not parts_with_splits:
        raise DataError(f"{slices.source}: no slices in the {', '.join(splits)} split(s)")
    subjects = np.concatenate([part.subject_ids for _, part in parts_with_splits]).astype(str)
    labels = [
        part.labels.astype(str) if part.labels is not None else np.full(len(part), "", dtype=str)
        for _, part in parts_with_splits
    ]
    columns = {
        "dataset": np.repeat(dataset_name, len(subjects)),
        "split": np.concatenate([np.repeat(split, len(part)) for split, part in parts_with_splits]),
        "subject": subjects,
        "slice_index": np.concatenate([part.slice_indices for _, part in parts_with_splits]),
        "class_label": np.concatenate(labels),
        **demographic_columns(subjects, slices.demographics),
    }
    images = np.concatenate([part.images for _, part in parts_with_splits])
    return SliceTable(images, columns)


def join_tables(tables: list[SliceTable]) -> SliceTable:
    """One table of all rows; with several datasets, subject ids are prefixed by the dataset
    name so that "001" of one dataset is not "001" of another."""
    names = list(tables[0].columns)
    columns = {name: np.concatenate([table.columns[name] for table in tables]) for name in names}
    if len(tables) > 1:
        columns["subject"] = np.char.add(np.char.add(columns["dataset"], ":"), columns["subject"])
    return SliceTable(np.concatenate([table.images for table in tables]), columns)


def dataset_names(paths: list[Path]) -> list[str]:
    """A short distinct name per dataset path: its file or folder name, numbered if repeated."""
    names = [path.name or str(path) for path in paths]
    return [
        f"{name} #{index + 1}" if names.count(name) > 1 else name
        for index, name in enumerate(names)
    ]


def load_table(
    paths: list[Path],
    hyperparameters: Hyperparameters,
    splits: tuple[str, ...],
    max_slices: int,
    demographics_csv: Path | None = None,
) -> SliceTable:
    """The chosen splits of every dataset, loaded as the run saw them (its image size, slices
    per volume and seed), then at most `max_slices` rows drawn with the run's seed."""
    tables = []
    for path, name in zip(paths, dataset_names(paths), strict=True):
        slices = load_training_data(path, hyperparameters, demographics_csv=demographics_csv)
        tables.append(slice_table(slices, splits, name))
    table = join_tables(tables)
    return table.subset(capped_indices(len(table), max_slices, hyperparameters.seed))


# Embeddings -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Embeddings:
    """Both embeddings of N slices, and their code maps."""

    code_maps: np.ndarray  # (N, h, w) int32
    code_histogram: np.ndarray  # (N, K) float64, rows sum to 1
    latent_map: np.ndarray  # (N, G * G * D) float32

    def features(self, name: str) -> np.ndarray:
        return getattr(self, name)


def pooled_latent_map(latents: np.ndarray) -> np.ndarray:
    """Pre-quantization vectors (N, h, h, D) -> (N, G * G * D): each averaged over a G x G grid
    of blocks of (h / G) x (h / G) positions, G = min(LATENT_GRID, h), and flattened."""
    count, size, _, depth = latents.shape
    grid = min(LATENT_GRID, size)
    step = size // grid
    blocks = latents[:, : grid * step, : grid * step].reshape(count, grid, step, grid, step, depth)
    return blocks.mean(axis=(2, 4)).reshape(count, -1)


def embed_slices(vqvae, images: np.ndarray, num_embeddings: int) -> Embeddings:
    """(N, S, S) uint8 slices -> their code maps, code histograms and pooled latent maps,
    encoded `ENCODE_CHUNK` slices at a time."""
    code_maps, latent_maps = [], []
    for start in range(0, len(images), ENCODE_CHUNK):
        chunk = images[start : start + ENCODE_CHUNK, ..., None].astype(np.float32) / 255.0
        code_maps.append(encode_code_maps(vqvae, chunk))
        latent_maps.append(pooled_latent_map(np.asarray(vqvae.encode(chunk))))
    code_maps = np.concatenate(code_maps)
    return Embeddings(
        code_maps=code_maps,
        code_histogram=code_histograms(code_maps, num_embeddings),
        latent_map=np.concatenate(latent_maps).astype(np.float32),
    )


@dataclass(frozen=True)
class Projection:
    """A 2-D projection of one embedding: (N, 2) points and the axis labels."""

    points: np.ndarray
    axis_labels: tuple[str, str]


def project(features: np.ndarray, method: str, seed: int) -> Projection:
    """(N, F) -> (N, 2) by PCA (axes labelled with their share of the variance) or t-SNE
    (perplexity min(30, (N - 1) / 3), PCA initialisation; exact up to EXACT_TSNE_LIMIT slices,
    Barnes-Hut above). Identical features for every slice project to the origin."""
    from sklearn.decomposition import PCA
    from sklearn.manifold import TSNE

    if len(features) < 3:
        raise ValueError(f"a projection needs at least 3 slices, got {len(features)}")
    if method not in METHODS:
        raise ValueError(f"unknown projection method {method!r}; choose one of {METHODS}")
    if np.ptp(features, axis=0).max() == 0:
        # Every slice has the same embedding (e.g. a collapsed codebook): nothing to project.
        return Projection(np.zeros((len(features), 2)), ("(all slices identical)", ""))
    if method == "pca":
        pca = PCA(n_components=2, random_state=seed)
        points = pca.fit_transform(features)
        shares = pca.explained_variance_ratio_
        return Projection(points, (f"PC1 ({shares[0]:.0%} of variance)", f"PC2 ({shares[1]:.0%})"))
    perplexity = min(30.0, (len(features) - 1) / 3)
    method = "exact" if len(features) <= EXACT_TSNE_LIMIT else "barnes_hut"
    tsne = TSNE(2, perplexity=perplexity, init="pca", method=method, random_state=seed)
    return Projection(tsne.fit_transform(features), ("t-SNE 1", "t-SNE 2"))


# Groupings --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Grouping:
    """A label per slice; `groups` lists the real groups in display order, and every label
    not among them (UNGROUPED, UNKNOWN) is drawn grey and left out of the scores."""

    name: str
    title: str
    labels: np.ndarray  # (N,) str
    groups: tuple[str, ...]

    def grouped(self) -> np.ndarray:
        """(N,) bool: the slices that belong to one of `groups`."""
        return np.isin(self.labels, self.groups)


def slice_position_grouping(slice_indices: np.ndarray, datasets: np.ndarray) -> Grouping | None:
    """Inferior, middle and superior thirds of each dataset's slice positions: slice i of a
    dataset whose slices run 0..n-1 falls in third floor(3 i / n). Datasets with fewer than 3
    positions (e.g. one slice per image) are UNKNOWN; None when no dataset has 3."""
    labels = np.full(len(slice_indices), UNKNOWN, dtype=object)
    for dataset in np.unique(datasets):
        members = datasets == dataset
        positions = int(slice_indices[members].max()) + 1
        if positions >= 3:
            thirds = np.minimum(3 * slice_indices[members] // positions, 2)
            labels[members] = np.array(POSITION_THIRDS, dtype=object)[thirds]
    if not np.isin(labels, POSITION_THIRDS).any():
        return None
    title = "slice position within its volume"
    return Grouping("slice_position", title, labels.astype(str), POSITION_THIRDS)


def subject_grouping(subjects: np.ndarray, top: int) -> Grouping:
    """The `top` subjects with most slices (ties by id), every other subject UNGROUPED."""
    names, counts = np.unique(subjects, return_counts=True)
    order = np.lexsort((names, -counts))[:top]
    chosen = tuple(sorted(names[order]))
    labels = np.where(np.isin(subjects, chosen), subjects, UNGROUPED)
    return Grouping("subject", f"subject (top {len(chosen)} by slice count)", labels, chosen)


def categorical_grouping(name: str, title: str, values: np.ndarray) -> Grouping | None:
    """Group by a string column ("" = UNKNOWN); None when fewer than two groups are known."""
    labels = np.where(values == "", UNKNOWN, values).astype(str)
    groups = tuple(sorted(set(labels) - {UNKNOWN}))
    return Grouping(name, title, labels, groups) if len(groups) >= 2 else None


def cdr_grouping(cdr: np.ndarray) -> Grouping | None:
    """Clinical Dementia Rating 0, 0.5, 1, 2 ... as "CDR 0" etc.; None if under two known."""
    labels = np.array([UNKNOWN if np.isnan(value) else f"CDR {value:g}" for value in cdr])
    known = sorted({value for value in cdr if not np.isnan(value)})
    groups = tuple(f"CDR {value:g}" for value in known)
    return Grouping("cdr", "clinical dementia rating", labels, groups) if len(groups) >= 2 else None


def age_grouping(ages: np.ndarray) -> Grouping | None:
    """Age bands of AGE_BANDS; None if fewer than two bands hold a slice."""
    labels = np.full(len(ages), UNKNOWN, dtype=object)
    for low, high, name in AGE_BANDS:
        labels[(ages >= low) & (ages < high)] = name
    labels = labels.astype(str)
    groups = tuple(name for _, _, name in AGE_BANDS if name in labels)
    return Grouping("age_band", "age band", labels, groups) if len(groups) >= 2 else None


def groupings(table: SliceTable, top_subjects: int) -> list[Grouping]:
    """Every grouping that the table's columns support (see the module docstring)."""
    columns = table.columns
    splits = set(columns["split"])
    found = [
        Grouping("split", "split", columns["split"], tuple(s for s in SPLITS if s in splits)),
        slice_position_grouping(columns["slice_index"], columns["dataset"]),
        subject_grouping(columns["subject"], top_subjects),
        categorical_grouping("dataset", "dataset", columns["dataset"]),
        categorical_grouping("class_label", "class label", columns["class_label"]),
        cdr_grouping(columns["cdr"]),
        age_grouping(columns["age"]),
        categorical_grouping("sex", "sex", columns["sex"]),
    ]
    return [grouping for grouping in found if grouping is not None]


# Numbers ----------------------------------------------------------------------------------


def confidence_ellipse(
    mean: np.ndarray, covariance: np.ndarray, chi_square: float = CHI_SQUARE_95_2DOF
) -> Ellipse:
    """The ellipse (p - mean)^T C^-1 (p - mean) = chi_square for a 2x2 covariance C.

    With eigenvalues l1 >= l2 and the unit eigenvector v1 of l1, its full axes are
    2 sqrt(chi_square l1) (width) and 2 sqrt(chi_square l2) (height), its width turned by
    atan2(v1_y, v1_x) from the x axis (in degrees, as matplotlib's `Ellipse` takes it).
    """
    eigenvalues, eigenvectors = np.linalg.eigh(np.asarray(covariance, dtype=np.float64))
    minor, major = np.sqrt(chi_square * np.clip(eigenvalues, 0.0, None))
    angle = math.degrees(math.atan2(eigenvectors[1, 1], eigenvectors[0, 1]))
    return Ellipse(tuple(mean), width=2 * major, height=2 * minor, angle=angle, fill=False)


def silhouette(features: np.ndarray, grouping: Grouping) -> float | None:
    """Silhouette score of the grouped slices, or None when there are not at least two groups
    and more slices than groups."""
    from sklearn.metrics import silhouette_score

    grouped = grouping.grouped()
    labels = grouping.labels[grouped]
    groups = len(set(labels))
    if groups < 2 or groups >= len(labels):
        return None
    return float(silhouette_score(features[grouped], labels))


def distinctive_codes(
    histograms: np.ndarray, grouping: Grouping, count: int = DISTINCTIVE_CODES
) -> list[dict]:
    """The `count` codes whose share h_k differs most between groups (largest one-way ANOVA F),
    each with its mean share per group; codes whose share does not differ (F = 0) are left
    out, so [] when under two groups hold slices or no code differs."""
    from sklearn.feature_selection import f_classif

    grouped = grouping.grouped()
    labels = grouping.labels[grouped]
    present = [group for group in grouping.groups if group in labels]
    if len(present) < 2 or len(labels) <= len(present):
        return []
    with warnings.catch_warnings(), np.errstate(divide="ignore", invalid="ignore"):
        warnings.simplefilter("ignore")
        f_statistics, _ = f_classif(histograms[grouped], labels)
    f_statistics = np.nan_to_num(f_statistics, nan=0.0, posinf=np.finfo(np.float64).max)
    codes = [
        code for code in np.argsort(-f_statistics, kind="stable")[:count] if f_statistics[code] > 0
    ]
    return [
        {
            "code": int(code),
            "f_statistic": float(f_statistics[code]),
            "mean_share": {
                group: float(histograms[grouped][labels == group, code].mean()) for group in present
            },
        }
        for code in codes
    ]


def grouping_report(
    grouping: Grouping, embeddings: Embeddings, projections: dict[tuple[str, str], Projection]
) -> dict:
    """Counts per group, silhouette scores in every embedding and projection, and the
    distinctive codes of one grouping."""
    labels, counts = np.unique(grouping.labels, return_counts=True)
    scores = {}
    for embedding in EMBEDDINGS:
        scores[embedding] = {"full": silhouette(embeddings.features(embedding), grouping)}
        for (name, method), projection in projections.items():
            if name == embedding:
                scores[embedding][method] = silhouette(projection.points, grouping)
    return {
        "title": grouping.title,
        "groups": {str(label): int(count) for label, count in zip(labels, counts, strict=True)},
        "silhouette": scores,
        "distinctive_codes": distinctive_codes(embeddings.code_histogram, grouping),
    }


# Figures ----------------------------------------------------------------------------------


def group_colours(count: int) -> list:
    """`count` distinct colours: tab10 up to 10 groups, tab20 up to 20, turbo beyond."""
    if count <= 10:
        return list(colormaps["tab10"].colors[:count])
    if count <= 20:
        return list(colormaps["tab20"].colors[:count])
    return [colormaps["turbo"](value) for value in np.linspace(0, 1, count)]


def draw_groups(axis, points: np.ndarray, grouping: Grouping) -> None:
    """Scatter (N, 2) points coloured by group (ungrouped grey, underneath), with the 95%
    confidence ellipse of every group of 3 or more points."""
    ungrouped = ~grouping.grouped()
    if ungrouped.any():
        axis.scatter(*points[ungrouped].T, s=8, color="0.75", label="other / unknown")
    for group, colour in zip(grouping.groups, group_colours(len(grouping.groups)), strict=True):
        members = points[grouping.labels == group]
        axis.scatter(*members.T, s=10, color=colour, label=f"{group} ({len(members)})")
        if len(members) >= 3:
            ellipse = confidence_ellipse(members.mean(axis=0), np.cov(members.T))
            ellipse.set(edgecolor=colour, linewidth=1.5)
            axis.add_patch(ellipse)


def plot_grouping(
    grouping: Grouping, projections: dict[tuple[str, str], Projection], scores: dict, title: str
) -> Figure:
    """One panel per (embedding, method): rows are embeddings, columns methods; each panel
    titled with the grouping's silhouette score in that projection."""
    methods = sorted({method for _, method in projections}, key=METHODS.index)
    figure = Figure(figsize=(5.2 * len(methods) + 2.8, 4.6 * len(EMBEDDINGS)), layout="constrained")
    axes = figure.subplots(len(EMBEDDINGS), len(methods), squeeze=False)
    for row, (embedding, embedding_title) in enumerate(EMBEDDINGS.items()):
        for column, method in enumerate(methods):
            axis = axes[row, column]
            projection = projections[(embedding, method)]
            draw_groups(axis, projection.points, grouping)
            score = scores[embedding][method]
            shown = "n/a" if score is None else f"{score:.2f}"
            name = "PCA" if method == "pca" else "t-SNE"
            axis.set_title(f"{embedding_title}, {name}\nsilhouette {shown}", fontsize=10)
            axis.set_xlabel(projection.axis_labels[0])
            axis.set_ylabel(projection.axis_labels[1])
            axis.autoscale_view()
    handles, labels = axes[0, 0].get_legend_handles_labels()
    figure.legend(handles, labels, loc="outside right upper", title=grouping.title, fontsize=8)
    figure.suptitle(title)
    return figure


def plot_codebook(
    vqvae,
    num_embeddings: int,
    code_share: np.ndarray,
    examples: np.ndarray,
    example_code_maps: np.ndarray,
    example_labels: list[str],
    title: str,
) -> Figure:
    """Top: each code k decoded alone (a code map filled with k), framed in its colour and
    titled with its share of all positions: every code in order when there are at most
    `CODEBOOK_CODES_SHOWN`, else that many of the most used, most used first. Bottom: real
    (M, S, S) uint8 slices with their (M, h, w) code maps laid over them (upsampled by
    repetition, so each code is a block)."""
    size, code_map_size = examples.shape[1], example_code_maps.shape[1]
    if num_embeddings <= CODEBOOK_CODES_SHOWN:
        shown = np.arange(num_embeddings)
        heading = "each code decoded alone"
    else:
        shown = np.argsort(-code_share, kind="stable")[:CODEBOOK_CODES_SHOWN]
        heading = f"the {CODEBOOK_CODES_SHOWN} most used of {num_embeddings} codes, decoded alone"
    filled = np.repeat(shown, code_map_size**2)
    decoded = decode_code_maps(vqvae, filled.reshape(len(shown), code_map_size, code_map_size))
    columns = min(len(shown), 16)
    code_rows = math.ceil(len(shown) / columns)
    figure = Figure(figsize=(1.3 * columns + 1.5, 1.5 * code_rows + 4.4), layout="constrained")
    top, bottom = figure.subfigures(2, 1, height_ratios=(1.5 * code_rows + 0.5, 3.9))
    colours = code_colormap(num_embeddings)
    axes = top.subplots(code_rows, columns, squeeze=False).ravel()
    for axis in axes[len(shown) :]:
        axis.set_axis_off()
    for axis, code, image in zip(axes, shown, decoded, strict=False):
        axis.imshow(image[..., 0], cmap="gray", vmin=0, vmax=1)
        axis.set_xticks([])
        axis.set_yticks([])
        for spine in axis.spines.values():
            spine.set(edgecolor=colours(code), linewidth=3)
        axis.set_title(f"code {code}\n{code_share[code]:.1%}", fontsize=8)
    top.suptitle(f"{heading} (share of all code-map positions)", fontsize=10)

    scale = size // code_map_size
    code_norm = Normalize(-0.5, num_embeddings - 0.5)
    axes = bottom.subplots(1, len(examples), squeeze=False)[0]
    for axis, image, code_map, label in zip(
        axes, examples, example_code_maps, example_labels, strict=True
    ):
        axis.imshow(image, cmap="gray", vmin=0, vmax=255)
        axis.imshow(
            np.kron(code_map, np.ones((scale, scale), dtype=code_map.dtype)),
            cmap=colours,
            norm=code_norm,
            alpha=0.45,
        )
        axis.set_title(label, fontsize=9)
        axis.set_axis_off()
    bar = bottom.colorbar(ScalarMappable(code_norm, colours), ax=axes, label="code", shrink=0.9)
    bar.set_ticks(code_ticks(num_embeddings))
    bottom.suptitle("where the codes fall on real slices", fontsize=10)
    figure.suptitle(title)
    return figure


# The whole analysis -----------------------------------------------------------------------


def analyse(
    vqvae,
    hyperparameters: Hyperparameters,
    table: SliceTable,
    out: Path,
    methods: tuple[str, ...] = METHODS,
    top_subjects: int = 8,
    examples: int = 4,
    title: str = "",
) -> dict:
    """Embed, project, plot and score the slices of `table` into `out` (which must exist);
    returns the report also written to out/latent.json."""
    embeddings = embed_slices(vqvae, table.images, hyperparameters.num_embeddings)
    projections = {
        (embedding, method): project(embeddings.features(embedding), method, hyperparameters.seed)
        for embedding in EMBEDDINGS
        for method in methods
    }
    report = {
        "slices": len(table),
        "num_embeddings": hyperparameters.num_embeddings,
        "latent_dim": hyperparameters.latent_dim,
        "methods": list(methods),
        "code_share": embeddings.code_histogram.mean(axis=0).tolist(),
        "groupings": {},
        "figures": [],
    }
    for grouping in groupings(table, top_subjects):
        entry = grouping_report(grouping, embeddings, projections)
        report["groupings"][grouping.name] = entry
        path = out / f"latent_{grouping.name}.png"
        figure_title = f"{title}: {len(table)} slices by {grouping.title}"
        figure = plot_grouping(grouping, projections, entry["silhouette"], figure_title)
        report["figures"].append(str(save_figure(figure, path)))

    chosen = capped_indices(len(table), examples, hyperparameters.seed)
    labels = [
        f"{table.columns['subject'][index]}, slice {table.columns['slice_index'][index]}"
        for index in chosen
    ]
    codebook = plot_codebook(
        vqvae,
        hyperparameters.num_embeddings,
        embeddings.code_histogram.mean(axis=0),
        table.images[chosen],
        embeddings.code_maps[chosen],
        labels,
        f"{title}: codebook of {hyperparameters.num_embeddings} codes",
    )
    report["figures"].append(str(save_figure(codebook, out / "codebook.png")))
    (out / "latent.json").write_text(json.dumps(report, indent=2) + "\n")
    return report
