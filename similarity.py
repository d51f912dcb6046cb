"""How good a trained run is: reconstruction SSIM, PSNR and MAE per slice, and its samples.

    python similarity.py --run DIR [--data PATH] [--split test] [--samples N] [--json]
                         [--temperature T] [--top-k K] [--top-p P] [--coarse-top-p P]
                         [--guidance W [NAME=W ...]] [--convolutional-c2st]
                         [--skip-conditions]

All three compare images on the [0, 1] scale, shaped (N, S, S, 1) (brain_vqvae/metrics.py):

- SSIM (Wang et al., 2004) with an 11x11 Gaussian window of sigma 1.5, data range 1,
  K1 = 0.01, K2 = 0.03, averaged over the window positions that lie wholly inside the image
  (the same numbers as `skimage.metrics.structural_similarity(..., gaussian_weights=True,
  sigma=1.5, use_sample_covariance=False, data_range=1)`);
- PSNR = 10 log10(1 / MSE) in dB;
- MAE = mean |x - y|.

The mission's target is a mean SSIM of at least `ssim_target` (0.6) on held-out slices.

SSIM says nothing about generated slices, so the prior is judged too
(brain_vqvae/evaluation.py): its negative log-likelihood of the split's code maps in bits per
code (against log2 K for a uniform prior), the share of each code in samples against real code
maps, novelty (each sample's highest SSIM to any training slice; near 1 means the prior copies
its training set), and how real and varied its samples are (brain_vqvae/realism.py), each
measure beside its real-vs-real floor, two halves of the split's people scored against each
other: a Fréchet distance and k-NN precision/recall in the features of a domain network trained
on the run's training split (saved in the run folder as realism_features.keras the first time),
classifier two-sample tests (0.5 = indistinguishable) for real vs reconstructions,
reconstructions vs samples (the prior alone) and real vs samples (with --convolutional-c2st,
also by a convolutional network trained on the pixels), diversity as pairwise MS-SSIM
and SSIM, the distance between the power spectra of samples and real slices (blur, and the
checkerboard of an up-convolution), and the share of implausible samples (a brain broken into
more islands, or with more holes, than any training slice at its level has); and each of these
again for what a perfect prior would draw (training slices through the same decoder), the best
a prior can score against the split's few people. The figures and the numbers (report.json,
what --json prints) go to RUN/similarity_<split> (or --out): realism.png draws the measures
beside their floors, spectrum.png the power spectra, nearest_training.png the samples beside
their nearest training slices. The samples are drawn as `predict.py` draws them, with
the same --temperature, --top-k and --top-p, so a sampling setting can be judged before it is
used. A conditional prior's obedience (slices asked for levels, ages and a diagnosis, whole
volumes) is judged too, unless --skip-conditions: that takes most of a hifi run's judging time.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from brain_vqvae.data import SPLITS, DataError
from brain_vqvae.evaluation import evaluate_run, format_report
from brain_vqvae.generation import add_guidance_argument, add_sampling_arguments
from brain_vqvae.runs import RunError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", required=True, help="run folder made by train.py")
    parser.add_argument("--data", help="dataset (default: the one the run was trained on)")
    parser.add_argument("--split", default="test", choices=SPLITS)
    parser.add_argument(
        "--samples",
        type=int,
        help="samples to judge (default: as many as the split has slices, at least 1024)",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", help="figure folder (default RUN/similarity_<split>)")
    parser.add_argument("--cache-dir", help="where decoded slices are cached")
    add_guidance_argument(parser, "guidance of the conditional draws judged")
    add_sampling_arguments(parser)
    parser.add_argument(
        "--convolutional-c2st",
        action="store_true",
        help="also run the two-sample tests with a convolutional classifier trained on the "
        "pixels (about a minute per test on a CPU)",
    )
    parser.add_argument(
        "--skip-conditions",
        action="store_true",
        help="judge the reconstructions and the samples' realism only, not how a conditional "
        "prior obeys (levels, ages, the diagnosis, whole volumes: most of a hifi run's judging "
        "time)",
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    return parser


def print_progress(message: str) -> None:
    """What the judging starts next, on stderr (stdout holds the report)."""
    print(f"similarity: {message} ...", file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    arguments = parser.parse_args(argv)
    if arguments.samples is not None and arguments.samples < 2:
        parser.error("--samples must be at least 2")
    try:
        report = evaluate_run(
            Path(arguments.run),
            arguments.data,
            arguments.split,
            arguments.samples,
            arguments.seed,
            arguments.out,
            arguments.cache_dir,
            arguments.guidance,
            arguments.temperature,
            arguments.top_k,
            arguments.top_p,
            arguments.coarse_top_p,
            convolutional_c2st=arguments.convolutional_c2st,
            judge_obedience=not arguments.skip_conditions,
            progress=print_progress,
        )
    except (RunError, DataError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(json.dumps(report) if arguments.json else format_report(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
