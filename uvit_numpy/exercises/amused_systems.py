"""Exercises on the parts of aMUSEd around its transformer: CLIP's BPE merge loop and the causal
mask of its text encoder, then the VQ-GAN's GroupNorm (forward and backward) and its vector
quantiser with the straight-through gradient.

The references are the package's own: `clip_tokenizer.bpe` (one word), `functional.causal_mask`
with `functional.scaled_dot_product_attention(..., is_causal=True)`, `functional.group_norm` and
`group_norm_backward`, and `functional.nearest_code`, `embedding`, `vq_loss` and
`straight_through` with their backward passes.

Notebook: book/exercises/09_amused_systems.ipynb.
"""

import itertools
import math
from collections import Counter

import numpy as np

from .. import clip_tokenizer
from .. import functional as F
from .catalogue import Case, Exercise, Mistake, register, rng_for

NOTEBOOK = "09_amused_systems.ipynb"
END = clip_tokenizer.END_OF_WORD             # "</w>", on the last symbol of every word


# --------------------------------------------------------------------------------------------------
# bpe_merge
# --------------------------------------------------------------------------------------------------
def bpe_merge(word, ranks):
    """Byte-pair encoding of one word, as CLIP's tokenizer does it.

    word: str, one word already in CLIP's byte alphabet (plain lower-case letters are
    themselves). ranks: {(left, right): rank}, 0 for the first merge learnt. The symbols start as
    the characters, "</w>" glued to the last; while some neighbouring pair is in `ranks`, the
    lowest-ranked one is merged at each occurrence, left to right. Returns the symbols, a list.
    """
    symbols = tuple(word[:-1]) + (word[-1] + END,)      # 'cat' -> ('c', 'a', 't</w>')
    return list(clip_tokenizer.bpe(symbols, ranks))


def _merge_pair(symbols, pair, from_right=False, keep_right_half=False):
    """`clip_tokenizer.merge_pair` with one knob turned: scan from the right, or forget to skip
    the right half of a merged pair (so that it is used twice)."""
    left, right = pair
    out, i = [], 0
    if from_right:                                       # the same scan, from the last symbol
        i = len(symbols) - 1
        while i >= 0:
            if i >= 1 and symbols[i - 1] == left and symbols[i] == right:
                out.append(left + right)
                i -= 2
            else:
                out.append(symbols[i])
                i -= 1
        return out[::-1]
    while i < len(symbols):
        if i + 1 < len(symbols) and symbols[i] == left and symbols[i + 1] == right:
            out.append(left + right)
            i += 1 if keep_right_half else 2
        else:
            out.append(symbols[i])
            i += 1
    return out


def _bpe_with(start="glued", pick="lowest", one_pass=False, from_right=False,
              keep_right_half=False):
    """bpe_merge with one mistake. start: "glued" (right), "no_end" (no </w>), "separate"
    (</w> its own symbol); pick: "lowest" (right) or "first" (the leftmost known pair);
    one_pass: go through the ranks once, merging each pair's first occurrence only."""
    def wrong(word, ranks):
        if start == "no_end":
            symbols = list(word)
        elif start == "separate":
            symbols = list(word) + [END]
        else:
            symbols = list(word[:-1]) + [word[-1] + END]
        if one_pass:
            for pair in sorted(ranks, key=ranks.get):
                for i in range(len(symbols) - 1):
                    if (symbols[i], symbols[i + 1]) == pair:
                        symbols[i:i + 2] = [pair[0] + pair[1]]
                        break                            # the first occurrence only
            return symbols
        while len(symbols) > 1:
            pairs = [p for p in itertools.pairwise(symbols) if p in ranks]
            if not pairs:
                break
            best = pairs[0] if pick == "first" else min(pairs, key=ranks.get)
            merged = _merge_pair(symbols, best, from_right, keep_right_half)
            if len("".join(merged)) > 4 * len(word) + 16:
                break                                    # the duplicating variant could grow
            symbols = merged
        return symbols
    return wrong


def _learn_merges(counts, n_merges):
    """The merges BPE learns from {word: count}, most frequent pair first (ties to the smaller
    pair, for a fixed order), as CLIP's vocabulary was learnt: {(left, right): rank}. Each
    merge's halves are single characters or made by earlier merges, as in CLIP's merges."""
    words = {tuple(w[:-1]) + (w[-1] + END,): c for w, c in counts.items()}
    ranks = {}
    for rank in range(n_merges):
        pairs = Counter()
        for symbols, c in words.items():
            for pair in itertools.pairwise(symbols):
                pairs[pair] += c
        if not pairs:
            break
        best = min(pairs, key=lambda p: (-pairs[p], p))
        ranks[best] = rank
        words = {tuple(clip_tokenizer.merge_pair(s, best)): c for s, c in words.items()}
    return ranks


_CORPUS = {"low": 5, "lower": 2, "lowest": 2, "newer": 6, "newest": 3, "wider": 3, "wide": 2,
           "banana": 3, "bandana": 2, "an": 4, "a": 6, "new": 4, "lane": 2}


def _bpe_cases():
    rng = rng_for("bpe_merge")
    ranks = _learn_merges(_CORPUS, 24)
    pieces = ["ne", "w", "an", "a", "lo", "er", "est", "ban", "id", "s", "d", "o"]
    unseen = ["".join(rng.choice(pieces, size=n)) for n in (4, 5)]   # words it never saw
    return [
        Case("a word of the small corpus the merges were learnt from: 'lowest'",
             ("lowest", ranks)),
        Case("'bananas': 'an' twice, and an 's' the corpus never ends on", ("bananas", ranks)),
        Case(f"a random word it never saw: {unseen[0]!r}", (unseen[0], ranks)),
        Case(f"another random word: {unseen[1]!r}", (unseen[1], ranks)),
        Case("one letter: the word is one symbol, 'a</w>'", ("a", ranks)),
        Case("the lowest rank wins, not the first pair: 'abc' with ('b', 'c</w>') before "
             "('a', 'b')", ("abc", {("b", "c" + END): 0, ("a", "b"): 1})),
        Case("a pair that repeats: 'abcabc', ('a', 'b') merges twice",
             ("abcabc", {("a", "b"): 0, ("ab", "c"): 1, ("ab", "c" + END): 2,
                         ("abc", "abc" + END): 3})),
        Case("overlapping pairs: 'aaaa', ('a', 'a') takes the first two, then the third and "
             "fourth are 'a', 'a</w>'",
             ("aaaa", {("a", "a"): 0, ("a", "a" + END): 1, ("aa", "aa" + END): 2,
                       ("aa", "a"): 3, ("aa", "a" + END): 4})),
    ]


register(Exercise(
    name="bpe_merge",
    summary="CLIP's BPE on one word: merge the lowest-ranked neighbouring pair until none is known",
    notebook=NOTEBOOK,
    reference=bpe_merge,
    make_cases=_bpe_cases,
    strings=True,
    exact=True,
    mistakes=(
        Mistake("first_pair_not_lowest_rank",
                "merge the known pair with the LOWEST rank, wherever it is in the word, not the "
                "first known pair from the left: the rank is the order the merges were learnt "
                "in, and a later merge builds on earlier ones.",
                _bpe_with(pick="first")),
        Mistake("first_occurrence_only",
                "a pair can occur more than once ('a n' in 'b a n a n a s'): merge every "
                "occurrence before looking for the next pair, and keep looping until no "
                "neighbouring pair is known; one pass over the ranks, merging each pair once, "
                "is not enough.",
                _bpe_with(one_pass=True)),
        Mistake("missing_end_of_word",
                "the last symbol carries '</w>' from the start: the symbols of 'cat' are "
                "['c', 'a', 't</w>'], so that merges such as ('e', 'r</w>') can tell a word's "
                "end from its middle.",
                _bpe_with(start="no_end")),
        Mistake("end_of_word_separate_symbol",
                "'</w>' is glued to the last character ('t</w>'), not a symbol of its own: CLIP's "
                "merges never pair a character with a bare '</w>'.",
                _bpe_with(start="separate")),
        Mistake("overlap_from_the_right",
                "scan for the pair from the left: ('a', 'a') on ['a', 'a', 'a'] gives "
                "['aa', 'a'], not ['a', 'aa'].",
                _bpe_with(from_right=True)),
        Mistake("right_half_used_twice",
                "after merging symbols i and i + 1, go on at i + 2: the right half is used up. "
                "('a', 'a') on ['a', 'a', 'a'] gives ['aa', 'a'], not ['aa', 'aa'].",
                _bpe_with(keep_right_half=True)),
    ),
))


# --------------------------------------------------------------------------------------------------
# causal_attention
# --------------------------------------------------------------------------------------------------
def causal_attention(q, k, v):
    """Causal scaled dot-product attention, as CLIP's text encoder uses it.

    q: (B, nh, L, hd), k, v: (B, nh, S, hd). Query i attends to keys j <= i only (the mask
    aligned at the top-left corner, as torch's `is_causal=True`): scores softmax(q k^T / sqrt(hd))
    with -inf where j > i before the softmax. Returns (B, nh, L, hd).
    """
    return F.scaled_dot_product_attention(q, k, v, is_causal=True)


def _causal_with(mask="lower", fill=-np.inf, after_softmax=False):
    """causal_attention with one mistake. mask: "lower" (right), "upper", "strict" (the diagonal
    masked too) or "bottom_right" (aligned at the last key); fill: the value masked scores get;
    after_softmax: zero the masked weights after the softmax instead."""
    def wrong(q, k, v):
        L, S = q.shape[-2], k.shape[-2]
        allowed = {"lower": np.tril(np.ones((L, S), dtype=bool)),
                   "upper": np.triu(np.ones((L, S), dtype=bool)),
                   "strict": np.tril(np.ones((L, S), dtype=bool), k=-1),
                   "bottom_right": np.tril(np.ones((L, S), dtype=bool), k=S - L)}[mask]
        scores = q @ k.swapaxes(-1, -2) / math.sqrt(q.shape[-1])     # (B, nh, L, S)
        if not after_softmax:
            scores = np.where(allowed, scores, fill)
        m = np.max(scores, axis=-1, keepdims=True)
        e = np.exp(scores - m)
        weights = e / np.sum(e, axis=-1, keepdims=True)
        if after_softmax:
            weights = weights * allowed
        return weights @ v                                            # (B, nh, L, hd)
    return wrong


def _causal_cases():
    rng = rng_for("causal_attention")

    def qkv(B, nh, L, S, hd, scale=1.0):
        return (scale * rng.standard_normal((B, nh, L, hd)),
                scale * rng.standard_normal((B, nh, S, hd)), rng.standard_normal((B, nh, S, hd)))
    return [
        Case("self-attention, random (B=2, nh=2, L=S=5, hd=4)", qkv(2, 2, 5, 5, 4)),
        Case("fewer queries than keys (B=1, nh=2, L=3, S=6, hd=4)", qkv(1, 2, 3, 6, 4)),
        Case("more queries than keys (B=2, nh=1, L=6, S=4, hd=3)", qkv(2, 1, 6, 4, 3)),
        Case("one token (B=2, nh=1, L=S=1, hd=4)", qkv(2, 1, 1, 1, 4)),
        Case("large scores: q, k ~ 30 (B=1, nh=2, L=S=4, hd=4)", qkv(1, 2, 4, 4, 4, 30.0)),
    ]


register(Exercise(
    name="causal_attention",
    summary="attention in which token i sees tokens 0..i only: -inf above the diagonal",
    notebook=NOTEBOOK,
    reference=causal_attention,
    make_cases=_causal_cases,
    mistakes=(
        Mistake("upper_triangle",
                "query i may attend to keys j <= i, the LOWER triangle with the diagonal: "
                "np.tril(np.ones((L, S), bool)). You kept the upper one (the future).",
                _causal_with(mask="upper")),
        Mistake("diagonal_masked",
                "a token attends to itself: keep the diagonal (j <= i, np.tril with k=0). With "
                "it masked, the first token has no key at all and its row of the softmax is "
                "0 / 0.",
                _causal_with(mask="strict")),
        Mistake("masked_with_zero",
                "set the masked scores to -inf, not 0: exp(0) is not 0, so a score of 0 still "
                "draws weight (multiplying the scores by the mask does the same).",
                _causal_with(fill=0.0)),
        Mistake("masked_after_softmax",
                "mask the scores BEFORE the softmax (-inf where j > i): zeroing the weights "
                "afterwards leaves rows that no longer sum to 1.",
                _causal_with(after_softmax=True)),
        Mistake("bottom_right_alignment",
                "when L != S the mask is aligned at the top-left corner, as torch's "
                "is_causal=True: query i sees keys 0..i, np.tril(np.ones((L, S))). You aligned "
                "it at the bottom-right (np.tril(..., k=S - L), flash-attention's convention for "
                "a cache of past keys).",
                _causal_with(mask="bottom_right")),
    ),
))


# --------------------------------------------------------------------------------------------------
# group_norm_forward_backward
# --------------------------------------------------------------------------------------------------
def group_norm_forward_backward(x, num_groups, weight, bias, dy, eps=1e-5):
    """GroupNorm's forward and backward, as torch's `nn.GroupNorm` (the VQ-GAN's norm).

    x, dy: (B, C, H, W); weight, bias: (C,); num_groups G divides C. Each sample's C channels
    form G groups of C/G consecutive channels, normalised over their channels and positions:
    y = (x - mean) / sqrt(var + eps) * weight + bias, biased variance. Returns
    (y (B, C, H, W), dx (B, C, H, W), dweight (C,), dbias (C,)).
    """
    y, cache = F.group_norm(x, num_groups, weight, bias, eps=eps, return_cache=True)
    dx, dweight, dbias = F.group_norm_backward(dy, cache)
    return y, dx, dweight, dbias


def _group_norm_with(groups="consecutive", ddof=0, eps_inside=True, mean_term=True,
                     xhat_term=True, use_weight=True):
    """The forward and backward with one mistake. groups: "consecutive" (right), "strided"
    (channel c in group c % G), "per_channel" (InstanceNorm) or "whole" (LayerNorm over the
    sample); ddof=1 the unbiased variance; eps_inside=False: 1 / (sqrt(var) + eps); the three
    backward switches drop a term of dx or the weight from g."""
    def wrong(x, num_groups, weight, bias, dy, eps=1e-5):
        B, C, H, W = x.shape
        G = num_groups
        shape, axes = {"consecutive": ((B, G, C // G, H * W), (2, 3)),
                       "strided": ((B, C // G, G, H * W), (1, 3)),
                       "per_channel": ((B, C, 1, H * W), (2, 3)),
                       "whole": ((B, 1, C, H * W), (2, 3))}[groups]
        xg = x.reshape(shape)                                          # groups on `axes`
        mean = xg.mean(axis=axes, keepdims=True)
        var = np.var(xg, axis=axes, keepdims=True, ddof=ddof)
        r = 1.0 / np.sqrt(var + eps) if eps_inside else 1.0 / (np.sqrt(var) + eps)
        xhat = (xg - mean) * r
        w4, b4 = weight.reshape(1, C, 1, 1), bias.reshape(1, C, 1, 1)
        y = xhat.reshape(x.shape) * w4 + b4
        g = (dy * w4 if use_weight else dy).reshape(shape)
        dxg = g.copy()
        if mean_term:
            dxg = dxg - g.mean(axis=axes, keepdims=True)
        if xhat_term:
            dxg = dxg - xhat * (g * xhat).mean(axis=axes, keepdims=True)
        dx = (r * dxg).reshape(x.shape)
        return y, dx, (dy * xhat.reshape(x.shape)).sum(axis=(0, 2, 3)), dy.sum(axis=(0, 2, 3))
    return wrong


def _group_norm_cases():
    rng = rng_for("group_norm_forward_backward")

    def case(label, B, C, H, W, G, scale=1.0, offset=0.0, **kwargs):
        x = offset + scale * rng.standard_normal((B, C, H, W))
        weight = 1.0 + 0.3 * rng.standard_normal(C)
        bias = 0.2 * rng.standard_normal(C)
        return Case(label, (x, G, weight, bias, rng.standard_normal((B, C, H, W))), kwargs)
    return [
        case("random (B=2, C=6, H=3, W=4), G=3", 2, 6, 3, 4, 3),
        case("batch 1, odd grid (B=1, C=8, H=3, W=5), G=2", 1, 8, 3, 5, 2),
        case("offset input, small spread: x ~ 5 + 0.1 N(0, 1) (B=2, C=4, H=2, W=3), G=2",
             2, 4, 2, 3, 2, scale=0.1, offset=5.0),
        case("eps=1e-2 on small values (B=2, C=6, H=2, W=2), G=2", 2, 6, 2, 2, 2, scale=0.05,
             eps=1e-2),
        case("one group: a LayerNorm over (C, H, W) (B=2, C=4, H=2, W=2), G=1", 2, 4, 2, 2, 1),
    ]


register(Exercise(
    name="group_norm_forward_backward",
    summary="GroupNorm over groups of consecutive channels, and its gradients dx, dweight, dbias",
    notebook=NOTEBOOK,
    reference=group_norm_forward_backward,
    make_cases=_group_norm_cases,
    mistakes=(
        Mistake("instance_norm",
                "normalise over a GROUP of C/G channels and all their positions, not over each "
                "channel alone (that is InstanceNorm, G = C): reshape to (B, G, C/G * H * W).",
                _group_norm_with(groups="per_channel")),
        Mistake("layer_norm_over_sample",
                "normalise each group of C/G channels separately, not the whole sample at once "
                "(that is G = 1, a LayerNorm over (C, H, W)).",
                _group_norm_with(groups="whole")),
        Mistake("strided_groups",
                "a group is C/G CONSECUTIVE channels (channels 0..C/G-1 form group 0), as "
                "x.reshape(B, G, C // G, H, W) makes them; x.reshape(B, C // G, G, ...) puts "
                "channels 0, G, 2G, ... together.",
                _group_norm_with(groups="strided")),
        Mistake("unbiased_variance",
                "use the biased variance (divide by the number of elements, ddof=0), as torch's "
                "GroupNorm does; np.var's default is already right, ddof=1 is not.",
                _group_norm_with(ddof=1)),
        Mistake("eps_outside_sqrt",
                "eps goes inside the square root: (x - mean) / sqrt(var + eps), not "
                "/ (sqrt(var) + eps).",
                _group_norm_with(eps_inside=False)),
        Mistake("missing_xhat_term",
                "the variance depends on every x of the group: dx = r (g - mean(g) - xhat "
                "mean(g xhat)), the means over the group's C/G * H * W elements; you left out "
                "the last term.",
                _group_norm_with(xhat_term=False)),
        Mistake("missing_mean_term",
                "the mean depends on every x of the group: dx = r (g - mean(g) - xhat "
                "mean(g xhat)); you left out mean(g).",
                _group_norm_with(mean_term=False)),
        Mistake("weight_not_applied",
                "the normalised value is multiplied by the weight, so the gradient reaching xhat "
                "is g = dy * weight (per channel), not dy.",
                _group_norm_with(use_weight=False)),
    ),
))


# --------------------------------------------------------------------------------------------------
# vector_quantize
# --------------------------------------------------------------------------------------------------
def vector_quantize(z, codebook, beta, dy):
    """A VQ-VAE's quantiser, forward and backward (the paper's weights, diffusers' legacy=False).

    z: (N, C) the encoder's vectors; codebook: (K, C); beta: the commitment weight; dy: (N, C),
    the gradient of the decoder's loss with respect to the quantiser's output. Forward:
    indices = argmin_k ||z - e_k|| (ties to the lowest k), z_q = e[indices],
    loss = mean((sg[z] - z_q)^2) + beta mean((z - sg[z_q])^2), out = z + sg[z_q - z].
    Backward of decoder loss + loss: dz = dy + beta 2 (z - z_q) / (N C) (straight through),
    dcodebook[k] = the sum over the vectors that chose k of 2 (z_q - z) / (N C).
    Returns (indices (N,) ints, out (N, C), loss (scalar), dz (N, C), dcodebook (K, C)).
    """
    indices = F.nearest_code(z, codebook)                          # (N,)
    z_q, lookup = F.embedding(indices, codebook, return_cache=True)  # (N, C)
    loss, loss_cache = F.vq_loss(z, z_q, beta, legacy=False, return_cache=True)
    out = F.straight_through(z, z_q)
    dz, _ = F.straight_through_backward(dy)                        # the decoder's gradient
    dz_loss, dz_q = F.vq_loss_backward(1.0, loss_cache)
    return indices, out, loss, dz + dz_loss, F.embedding_backward(dz_q, lookup)


def _vq_with(choose="argmin", distance="full", weights="paper", straight_through="z",
             accumulate=True):
    """vector_quantize with one mistake. choose: "argmin" (right), "argmax" or "last" (ties to
    the highest index); distance: "full" or "dot" (-2 z.e, the codes' squared norms dropped);
    weights: "paper" or "swapped" (beta on the codebook term, diffusers' legacy=True);
    straight_through: where dy goes: "z" (right), "stopped" (nowhere) or "codebook" (to the
    chosen codes instead of z); accumulate=False: dcodebook[indices] += ... (repeats lost)."""
    def wrong(z, codebook, beta, dy):
        K = codebook.shape[0]
        d = -2.0 * z @ codebook.T                                      # (N, K)
        if distance == "full":
            d = d + np.sum(z * z, axis=1, keepdims=True) + np.sum(codebook ** 2, axis=1)
        if choose == "argmax":
            indices = np.argmax(d, axis=1)
        elif choose == "last":
            indices = K - 1 - np.argmin(d[:, ::-1], axis=1)
        else:
            indices = np.argmin(d, axis=1)
        z_q = codebook[indices]
        mse = np.mean((z_q - z) ** 2)
        w_z, w_q = (beta, 1.0) if weights == "paper" else (1.0, beta)
        dz = w_z * 2.0 * (z - z_q) / z.size
        dz_q = w_q * 2.0 * (z_q - z) / z.size
        if straight_through == "z":
            dz = dz + dy
        elif straight_through == "codebook":
            dz_q = dz_q + dy
        dcodebook = np.zeros_like(codebook)
        if accumulate:
            np.add.at(dcodebook, indices, dz_q)
        else:
            dcodebook[indices] += dz_q
        return indices, z + (z_q - z), (1.0 + beta) * mse, dz, dcodebook
    return wrong


def _vq_cases():
    rng = rng_for("vector_quantize")

    def case(label, z, codebook, beta=0.25):
        return Case(label, (z, codebook, beta, rng.standard_normal(z.shape)))

    def codes(K, C):                       # codes of clearly different lengths
        return rng.standard_normal((K, C)) * rng.uniform(0.3, 2.0, size=(K, 1))
    repeated = np.array([[1.0, 0.0], [0.0, 2.0], [1.0, 0.0], [-1.0, 0.0], [0.0, -1.0]])
    return [
        case("random (N=12, C=4, K=6), beta=0.25", rng.standard_normal((12, 4)), codes(6, 4)),
        case("many vectors, few codes: each code chosen often (N=20, C=3, K=3), beta=0.5",
             rng.standard_normal((20, 3)), codes(3, 3), beta=0.5),
        case("one long code far away, short codes near (N=8, C=2, K=4)",
             0.5 * rng.standard_normal((8, 2)),
             np.array([[6.0, 6.0], [0.4, 0.1], [-0.3, 0.5], [0.1, -0.6]])),
        case("ties: a repeated code and points halfway between codes, exact integers (N=6, "
             "C=2, K=5)",
             np.array([[1.0, 0.0], [0.0, 0.0], [2.0, 0.0], [0.0, 1.0], [1.0, 1.0], [-1.0, -1.0]]),
             repeated),
        case("batch of one vector (N=1, C=5, K=7), beta=1.5", rng.standard_normal((1, 5)),
             codes(7, 5), beta=1.5),
    ]


register(Exercise(
    name="vector_quantize",
    summary="the VQ-GAN's quantiser: nearest code, codebook and commitment losses, "
            "straight-through gradient",
    notebook=NOTEBOOK,
    reference=vector_quantize,
    make_cases=_vq_cases,
    mistakes=(
        Mistake("argmax_not_argmin",
                "the nearest code has the SMALLEST distance: np.argmin over the codes, not "
                "np.argmax.",
                _vq_with(choose="argmax")),
        Mistake("code_norms_dropped",
                "||z - e||^2 = ||z||^2 - 2 z.e + ||e||^2: ||z||^2 is the same for every code and "
                "may be dropped, ||e||^2 may not. Without it the code most aligned with z wins, "
                "and a long code beats a near one.",
                _vq_with(distance="dot")),
        Mistake("ties_to_highest_index",
                "when two codes are equally near, take the lowest index, as np.argmin and "
                "torch.argmin do.",
                _vq_with(choose="last")),
        Mistake("commitment_weight_swapped",
                "beta weights the COMMITMENT term, the one whose gradient reaches z: "
                "dz gets beta 2 (z - z_q) / n and the codes 2 (z_q - z) / n. You swapped the "
                "weights, as diffusers' legacy=True keeps doing (the loss's value is the same, "
                "its gradients are not).",
                _vq_with(weights="swapped")),
        Mistake("gradient_stopped",
                "the decoder's gradient dy must reach the encoder: out = z + sg[z_q - z] passes "
                "it to z unchanged (straight through), so dz = dy + the commitment term's "
                "gradient. You stopped it at the quantiser.",
                _vq_with(straight_through="stopped")),
        Mistake("gradient_to_codebook",
                "the decoder's gradient dy goes straight through to z, not to the chosen codes: "
                "out = z + sg[z_q - z] is z as far as gradients go. Only the codebook term of "
                "the loss moves the codes.",
                _vq_with(straight_through="codebook")),
        Mistake("codebook_gradient_not_accumulated",
                "a code chosen by several vectors collects ALL their gradients: "
                "np.add.at(dcodebook, indices, dz_q); dcodebook[indices] += dz_q keeps only one "
                "of them.",
                _vq_with(accumulate=False)),
    ),
))
