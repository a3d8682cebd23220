"""Exercises on training MaskGIT-style, as aMUSEd is trained: the masking of a batch of code grids,
the masked cross-entropy, and one k-means step of the digit tokenizer that makes the codes.

The references are the package's: `training.mask_tokens` (replayed on the uniforms the exercise
passes in, since an exercise must be reproducible), `losses.cross_entropy` and
`tokenizer.kmeans_step`.

Notebook: book/exercises/08_maskgit.ipynb.
"""

import math

import numpy as np

from .. import losses, tokenizer, training
from .catalogue import Case, Exercise, Mistake, register, rng_for

NOTEBOOK = "08_maskgit.ipynb"
IGNORE = -100            # torch's and the package's ignore_index


# --------------------------------------------------------------------------------------------------
# mask_batch
# --------------------------------------------------------------------------------------------------
class _Replay:
    """A stand-in for np.random.Generator whose `random` hands back the given arrays in turn."""

    def __init__(self, *draws):
        self.draws = list(draws)

    def random(self, size=None):
        out = self.draws.pop(0)
        if size is not None and np.shape(out) != tuple(np.atleast_1d(size)):
            raise ValueError(f"expected a draw of shape {size}, have {np.shape(out)}")
        return out


def mask_batch(tokens, u_ratio, u_order, codebook_size):
    """Mask a batch of code grids for MaskGIT training (aMUSEd's cosine schedule).

    tokens: (B, H, W) ints in [0, K), K = codebook_size; u_ratio: (B,) and u_order: (B, H, W)
    uniforms in [0, 1). Per sample: r = cos(pi/2 u_ratio), n = round(L r) clipped to [1, L]
    (L = H W), and the n positions with the smallest u_order are masked. The mask id is K, the
    first id after the codebook. Returns (input_ids, labels), both (B, H, W) ints: input_ids
    with K at the masked positions, labels the true code there and -100 elsewhere.
    """
    B = tokens.shape[0]
    rng = _Replay(u_ratio, u_order.reshape(B, -1))
    return training.mask_tokens(tokens, rng, mask_token_id=codebook_size, ignore_index=IGNORE)


def _mask_with(count_of="masked", rounding="round", clamp=True, mask_id="K", smallest=True,
               labels="masked"):
    def wrong(tokens, u_ratio, u_order, codebook_size):
        B, H, W = tokens.shape
        L = H * W
        r = np.cos(math.pi / 2 * u_ratio)                             # (B,)
        if count_of == "kept":
            r = 1.0 - r
        n = np.round(L * r) if rounding == "round" else np.floor(L * r)
        n = (np.clip(n, 1, L) if clamp else n).astype(np.int64)       # (B,)
        order = u_order.reshape(B, L) if smallest else -u_order.reshape(B, L)
        rank = np.argsort(np.argsort(order, axis=1), axis=1)          # (B, L)
        masked = (rank < n[:, None]).reshape(B, H, W)
        mid = codebook_size if mask_id == "K" else codebook_size - 1
        input_ids = np.where(masked, mid, tokens)
        if labels == "everywhere":
            target = tokens.copy()
        elif labels == "kept":
            target = np.where(masked, IGNORE, tokens)
        else:
            target = np.where(masked, tokens, IGNORE)
        return input_ids, target
    return wrong


def _mask_cases():
    rng = rng_for("mask_batch")

    def case(label, B, H, W, K, u_ratio):
        return Case(label, (rng.integers(0, K, (B, H, W)), np.asarray(u_ratio, dtype=float),
                            rng.random((B, H, W)), K))
    return [
        case("three grids, light to heavy masking (B=3, H=4, W=4, K=8)", 3, 4, 4, 8,
             [0.2, 0.55, 0.85]),
        case("batch 1, odd grid (B=1, H=3, W=5, K=16)", 1, 3, 5, 16, [0.4]),
        case("u_ratio near 1: the count clips to one masked position (B=2, H=2, W=3, K=4)",
             2, 2, 3, 4, [0.999, 0.97]),
        case("u_ratio near 0: nearly everything masked (B=2, H=3, W=3, K=5)", 2, 3, 3, 5,
             [0.001, 0.1]),
    ]


register(Exercise(
    name="mask_batch",
    summary="MaskGIT's training mask: n = round(L cos(pi/2 u)) lowest-ranked positions, id K",
    notebook=NOTEBOOK,
    reference=mask_batch,
    make_cases=_mask_cases,
    exact=True,
    mistakes=(
        Mistake("cosine_gives_kept_count",
                "the cosine gives the fraction MASKED, r = cos(pi/2 u): near u = 0 almost "
                "everything is masked. Yours masks 1 - r, the fraction kept.",
                _mask_with(count_of="kept")),
        Mistake("mask_id_inside_codebook",
                "the mask token must not be a real code: with codes 0 .. K-1 it is K "
                "(aMUSEd's vocab_size - 1 with vocab_size = K + 1), not K - 1.",
                _mask_with(mask_id="K-1")),
        Mistake("largest_masked",
                "mask the n positions with the SMALLEST u_order values (a random order, cut at "
                "n), not the largest.",
                _mask_with(smallest=False)),
        Mistake("labels_everywhere",
                "the loss counts the masked positions only: labels are -100 (ignore_index) "
                "where the token is kept, the true code where it is masked.",
                _mask_with(labels="everywhere")),
        Mistake("labels_where_kept",
                "labels hold the true code where the input is MASKED (what the model must "
                "predict) and -100 where it is kept; yours are the other way round.",
                _mask_with(labels="kept")),
        Mistake("count_floored",
                "round L * r to the nearest integer (np.round), do not floor it.",
                _mask_with(rounding="floor")),
        Mistake("count_not_clipped",
                "clip the count to [1, L]: every sample masks at least one position, or it "
                "would add nothing to the loss.",
                _mask_with(clamp=False)),
    ),
))


# --------------------------------------------------------------------------------------------------
# masked_cross_entropy
# --------------------------------------------------------------------------------------------------
def masked_cross_entropy(logits, labels, label_smoothing=0.0):
    """The masked-token loss. logits: (B, K, H, W), the codes on axis 1; labels: (B, H, W) ints,
    -100 where nothing is predicted. Returns the scalar mean over the counted positions of
    (1 - e)(-log p[label]) + e mean_k(-log p[k]), p = softmax over K, e = label_smoothing.
    """
    return losses.cross_entropy(logits, labels, ignore_index=IGNORE,
                                label_smoothing=label_smoothing)


def _ce_with(count="masked", divide_by="count", stable=True, layout="BKHW", smooth="mean"):
    def wrong(logits, labels, label_smoothing=0.0):
        B, K = logits.shape[:2]
        if layout == "BKHW":
            rows = np.moveaxis(logits, 1, -1).reshape(-1, K)           # (B*H*W, K)
        else:
            rows = logits.reshape(-1, K)                               # misread as (B, H, W, K)
        t = labels.reshape(-1)
        valid = t != IGNORE
        if stable:
            z = rows - rows.max(axis=-1, keepdims=True)
            logp = z - np.log(np.exp(z).sum(axis=-1, keepdims=True))
        else:
            logp = np.log(np.exp(rows) / np.exp(rows).sum(axis=-1, keepdims=True))
        nll = -logp[np.arange(len(t)), np.where(valid, t, 0)]
        spread = -logp.mean(axis=-1) if smooth == "mean" else -logp.sum(axis=-1)
        per = (1.0 - label_smoothing) * nll + label_smoothing * spread
        if count == "all":
            return np.asarray(per.mean())
        total = np.sum(np.where(valid, per, 0.0))
        n = {"count": valid.sum(), "batch": B, "positions": len(t)}[divide_by]
        return np.asarray(total / n)
    return wrong


def _ce_cases():
    rng = rng_for("masked_cross_entropy")

    def case(label, B, K, H, W, masked, scale=2.0, **kwargs):
        logits = scale * rng.standard_normal((B, K, H, W))
        labels = rng.integers(0, K, (B, H, W))
        keep = rng.random((B, H, W)) >= masked
        keep.reshape(B, -1)[:, 0] = False                              # one counted per sample
        return Case(label, (logits, np.where(keep, IGNORE, labels)), kwargs)
    return [
        case("about half masked (B=2, K=5, H=3, W=4)", 2, 5, 3, 4, 0.5),
        case("label smoothing 0.1 (B=2, K=6, H=2, W=3)", 2, 6, 2, 3, 0.6, label_smoothing=0.1),
        case("batch 1, one masked position (B=1, K=4, H=2, W=2)", 1, 4, 2, 2, 0.0),
        case("large logits ~ 500 (B=3, K=4, H=2, W=2)", 3, 4, 2, 2, 0.5, scale=500.0),
        case("K differs from W: codes on axis 1 (B=2, K=3, H=2, W=5)", 2, 3, 2, 5, 0.7),
    ]


register(Exercise(
    name="masked_cross_entropy",
    summary="the masked-token cross-entropy over (B, K, H, W) logits, mean over masked positions",
    notebook=NOTEBOOK,
    reference=masked_cross_entropy,
    make_cases=_ce_cases,
    mistakes=(
        Mistake("loss_over_all_positions",
                "only the masked positions (label != -100) count: the kept ones are given to "
                "the model and predicting them teaches nothing.",
                _ce_with(count="all")),
        Mistake("mean_over_batch",
                "divide the sum over the masked positions by their number, not by the batch "
                "size: samples mask different counts.",
                _ce_with(divide_by="batch")),
        Mistake("mean_over_all_positions",
                "divide by the number of masked positions, not by all B*H*W positions (the "
                "ignored ones contribute zeros, not a count).",
                _ce_with(divide_by="positions")),
        Mistake("log_softmax_unstable",
                "log(softmax) overflows on large logits: compute log p = z - log(sum(exp(z))) "
                "with z = logits - max over K.",
                _ce_with(stable=False)),
        Mistake("codes_on_last_axis",
                "the logits are (B, K, H, W): move K last (np.moveaxis(logits, 1, -1)) before "
                "flattening to (B*H*W, K); a plain reshape mixes codes and positions.",
                _ce_with(layout="BHWK")),
        Mistake("smoothing_summed",
                "label smoothing spreads e evenly over the K codes: e * mean_k(-log p_k), not "
                "the sum over k.",
                _ce_with(smooth="sum")),
    ),
))


# --------------------------------------------------------------------------------------------------
# kmeans_step
# --------------------------------------------------------------------------------------------------
def kmeans_step(x, centroids):
    """One Lloyd iteration. x: (M, D) points, centroids: (K, D).

    Assign every point to its nearest centroid (squared Euclidean distance), move every centroid
    to the mean of its points; a centroid with no point moves to the worst-fitted point (the
    largest distance to its centroid), the i-th empty one (by index) to the i-th worst. Returns
    (new centroids (K, D), assignments (M,) ints, the mean over points of the squared distance
    to the OLD centroid).
    """
    return tokenizer.kmeans_step(x, centroids)


def _kmeans_with(mean="mean", empty="worst", err_of="old", err_mean="points", accumulate="add_at"):
    def wrong(x, centroids):
        K = len(centroids)
        d = ((x[:, None, :] - centroids[None]) ** 2).sum(-1)           # (M, K)
        assign = d.argmin(axis=1)
        sums = np.zeros_like(centroids)
        if accumulate == "add_at":
            np.add.at(sums, assign, x)
            counts = np.bincount(assign, minlength=K)
        else:                                                         # buffered: one per cluster
            sums[assign] += x
            counts = np.zeros(K, dtype=np.int64)
            counts[assign] += 1
        with np.errstate(all="ignore"):
            new = sums / counts[:, None] if mean == "mean" else sums.copy()
        empty_rows = np.flatnonzero(counts == 0)
        err = d[np.arange(len(x)), assign]                             # with the old centroids
        if empty == "worst" and len(empty_rows):
            new[empty_rows] = x[np.argsort(err)[::-1][:len(empty_rows)]]
        elif empty == "kept":
            new[empty_rows] = centroids[empty_rows]
        if err_of == "new":
            err = ((x - new[assign]) ** 2).sum(-1)
        mse = err.mean() if err_mean == "points" else err.mean() / x.shape[1]
        return new, assign, float(mse)
    return wrong


def _kmeans_cases():
    rng = rng_for("kmeans_step")
    blobs = np.concatenate([rng.normal(c, 0.3, (6, 2)) for c in ((0, 0), (3, 0), (0, 3))])
    return [
        Case("random points (M=20, D=3, K=4)",
             (rng.standard_normal((20, 3)), rng.standard_normal((4, 3)))),
        Case("one centroid far away gets no point (M=18, D=2, K=4)",
             (blobs, np.array([[0.1, 0.0], [2.9, 0.1], [0.0, 3.1], [50.0, 50.0]]))),
        Case("two empty centroids (M=12, D=2, K=5)",
             (rng.standard_normal((12, 2)),
              np.array([[0.0, 0.0], [1.0, 1.0], [-1.0, 0.5], [40.0, 0.0], [0.0, -40.0]]))),
        Case("K = 1 (M=7, D=4)", (rng.standard_normal((7, 4)), rng.standard_normal((1, 4)))),
    ]


register(Exercise(
    name="kmeans_step",
    summary="one Lloyd step of k-means: assign, move to means, re-seed empty clusters",
    notebook=NOTEBOOK,
    reference=kmeans_step,
    make_cases=_kmeans_cases,
    mistakes=(
        Mistake("empty_cluster_nan",
                "a centroid with no point divides 0 by 0 and becomes NaN; move it to the "
                "worst-fitted point instead (the largest distance to its old centroid).",
                _kmeans_with(empty="none")),
        Mistake("empty_cluster_kept",
                "this step re-seeds an empty centroid at the worst-fitted point (the i-th empty "
                "one at the i-th largest distance), so no code goes unused; you left it where "
                "it was.",
                _kmeans_with(empty="kept")),
        Mistake("centroids_not_means",
                "move each centroid to the MEAN of its points: divide the sum by the count.",
                _kmeans_with(mean="sum")),
        Mistake("fancy_index_add",
                "`sums[assign] += x` adds only one point per centroid (buffered fancy "
                "indexing); accumulate with np.add.at(sums, assign, x) and count with "
                "np.bincount(assign, minlength=K).",
                _kmeans_with(accumulate="fancy")),
        Mistake("error_with_new_centroids",
                "the returned error measures the assignment just made, against the OLD "
                "centroids, before they move.",
                _kmeans_with(err_of="new")),
        Mistake("error_per_coordinate",
                "the error is the mean over points of the squared distance (summed over D), "
                "not the mean over every coordinate.",
                _kmeans_with(err_mean="elements")),
    ),
))
