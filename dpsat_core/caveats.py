"""What a run's ε does not cover, one phrase each: pages, figures, exports, the report and the CLI use these.

Kept in one torch-free place so every output says it the same way and `dpsat show` stays fast.
"""

from __future__ import annotations

from .config import TrainConfig

# A private run in research mode: its noise and batches come from generators seeded by the stored seed.
SEEDED_NOISE = "seeded noise: for research, not for release"
# A private run in release mode: what its randomness is instead.
RELEASE_NOISE = "release noise: drawn from the OS entropy source, never stored, not reproducible"
# Outputs that read the training rows without noise (training loss, sharpness, landscapes, timings).
TRAINING_DATA = "computed on training data, not covered by ε"
# Timings: they follow each epoch's Poisson-sampled batch sizes, part of the mechanism's secret randomness.
BATCH_TIMING = "the times follow each epoch's Poisson batch sizes, which ε does not cover"
# ε is one run's: what picking or publishing several runs trained on the same rows costs on top (README).
PER_RUN = (
    "ε is per run: choosing among, or releasing several of, the private runs trained on the same rows costs "
    "privacy on those rows beyond one run's ε (up to the sum of their ε by basic composition)"
)
# What is measured on the held-out rows, without noise.
EVALUATION_ROWS = (
    "every figure computed on the validation and test rows (the accuracies and their intervals, the test loss, the "
    "classes a model predicts) is computed without noise: if those rows are private too, ε says nothing about them"
)
# Why δ defaults to a power of ten ≤ 1/(10n), for the pages and the README.
DELTA_WHY = (
    "δ is the probability that the ε guarantee fails; a mechanism that exposed one record in full with "
    "probability δ each would expose about n·δ records. At δ just below 1/n (the old default: n·δ = 0.999 at "
    "n = 999) that is about one record, so δ defaults to a power of ten at most 1/(10n) (n·δ ≤ 0.1)."
)


def randomness_note(config: TrainConfig) -> str:
    """The phrase for a run's randomness: `SEEDED_NOISE` or `RELEASE_NOISE` for private runs, "" for the others
    (a non-private run releases no noise)."""
    if not config.private:
        return ""
    return RELEASE_NOISE if config.randomness == "release" else SEEDED_NOISE
