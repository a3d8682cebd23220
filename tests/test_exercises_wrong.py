"""Realistic wrong solutions, written the way a student would, fail with the intended hint.

Each function below makes one classic mistake; the checker must reject it and name that mistake
(the key of the hint). They are written independently of the variants inside the package, so
these tests show that the diagnosis works on code it has never seen.
"""

import itertools
import math

import numpy as np
import pytest
from scipy.special import erf

import uvit_numpy.functional as F
from uvit_numpy.exercises import EXERCISES, check


# --- 01: patches and time -----------------------------------------------------------------------
def patchify_channels_first(x, patch_size):
    B, C, H, W = x.shape
    P = patch_size
    x = x.reshape(B, C, H // P, P, W // P, P).transpose(0, 2, 4, 1, 3, 5)  # (B, h, w, C, p1, p2)
    return x.reshape(B, -1, C * P * P)


def unpatchify_plain_reshape(x, channels):
    B, L, D = x.shape
    side = math.isqrt(L) * math.isqrt(D // channels)
    return x.reshape(B, channels, side, side)


def timestep_embedding_sin_first(timesteps, dim, max_period=10000):
    half = dim // 2
    freqs = np.exp(-math.log(max_period) * np.arange(half) / half)
    args = timesteps[:, None] * freqs[None]
    emb = np.concatenate([np.sin(args), np.cos(args)], axis=1)
    if dim % 2:
        emb = np.concatenate([emb, np.zeros((len(timesteps), 1))], axis=1)
    return emb


def timestep_embedding_no_pad(timesteps, dim, max_period=10000):
    half = dim // 2
    args = timesteps[:, None] * np.exp(-math.log(max_period) * np.arange(half) / half)
    return np.concatenate([np.cos(args), np.sin(args)], axis=1)


# --- 02: norms and activations ------------------------------------------------------------------
def layer_norm_unbiased(x, weight, bias, eps=1e-5):
    mu = x.mean(-1, keepdims=True)
    var = x.var(-1, ddof=1, keepdims=True)
    return (x - mu) / np.sqrt(var + eps) * weight + bias


def layer_norm_one_pass(x, weight, bias, eps=1e-5):
    mu = x.mean(-1, keepdims=True)
    var = (x ** 2).mean(-1, keepdims=True) - mu ** 2
    return (x - mu) / np.sqrt(var + eps) * weight + bias


def rms_norm_eps_outside(x, weight, eps=1e-6):
    rms = np.sqrt(np.mean(x ** 2, axis=-1, keepdims=True))
    return x / (rms + eps) * weight


def grn_eps_inside(x, gamma, beta, eps=1e-6):
    g = np.sqrt((x ** 2).sum(axis=(1, 2), keepdims=True) + eps)
    return gamma * (x * g / g.mean(axis=-1, keepdims=True)) + beta + x


def gelu_tanh(x):
    return 0.5 * x * (1 + np.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x ** 3)))


def softmax_naive(x, axis=-1):
    e = np.exp(x)
    return e / e.sum(axis=axis, keepdims=True)


# --- 03: attention and the U-ViT block ----------------------------------------------------------
def sdpa_unscaled(q, k, v):
    s = q @ np.swapaxes(k, -1, -2)
    s = np.exp(s - s.max(-1, keepdims=True))
    return (s / s.sum(-1, keepdims=True)) @ v


def mha_interleaved_heads(x, params, heads, context=None):
    c = x if context is None else context
    q, k, v = (t @ params[f"to_{n}.weight"].T for n, t in (("q", x), ("k", c), ("v", c)))
    B, L, I = q.shape
    hd = I // heads
    q = q.reshape(B, L, hd, heads).transpose(0, 3, 1, 2)          # the classic slip
    k = k.reshape(B, -1, hd, heads).transpose(0, 3, 1, 2)
    v = v.reshape(B, -1, hd, heads).transpose(0, 3, 1, 2)
    o = F.scaled_dot_product_attention(q, k, v)                    # (B, nh, L, hd)
    o = o.transpose(0, 2, 3, 1).reshape(B, L, I)
    return o @ params["to_out.0.weight"].T + params["to_out.0.bias"]


def uvit_block_skip_first(x, params, num_heads, skip=None):
    p = params
    if skip is not None:
        x = F.linear(np.concatenate([skip, x], -1), p["skip_linear.weight"], p["skip_linear.bias"])
    B, L, D = x.shape
    h = F.layer_norm(x, p["norm1.weight"], p["norm1.bias"])
    qkv = (h @ p["attn.qkv.weight"].T).reshape(B, L, 3, num_heads, D // num_heads)
    q, k, v = qkv.transpose(2, 0, 3, 1, 4)
    o = F.merge_heads(F.scaled_dot_product_attention(q, k, v))
    x = x + F.linear(o, p["attn.proj.weight"], p["attn.proj.bias"])
    h = F.layer_norm(x, p["norm2.weight"], p["norm2.bias"])
    return x + F.linear(F.gelu(F.linear(h, p["mlp.fc1.weight"], p["mlp.fc1.bias"])),
                        p["mlp.fc2.weight"], p["mlp.fc2.bias"])


# --- 04: convolutions ---------------------------------------------------------------------------
def conv2d_true_convolution(x, weight, bias, stride=1, padding=0):
    return F.conv2d(x, np.flip(weight, axis=(2, 3)), bias, stride=stride, padding=padding)


def conv2d_channel_last(x, weight, bias, stride=1, padding=0):
    return np.moveaxis(F.conv2d(x, weight, bias, stride=stride, padding=padding), 1, -1)


def depthwise_sums_channels(x, weight, bias, padding=1):
    B, C, H, W = x.shape
    k = weight.shape[-1]
    xs = np.pad(x.sum(axis=1, keepdims=True), ((0, 0), (0, 0), (padding,) * 2, (padding,) * 2))
    Ho, Wo = H + 2 * padding - k + 1, W + 2 * padding - k + 1
    y = np.zeros((B, C, Ho, Wo))
    for a in range(k):
        for d in range(k):
            y += xs[:, :, a:a + Ho, d:d + Wo] * weight[:, 0, a, d][:, None, None]
    return y + bias[:, None, None]


def conv_transpose_out_in(x, weight, bias):
    B, C, H, W = x.shape
    y = np.einsum("bchw,ocij->bohiwj", x, weight)                 # reads weight as (O, C, 2, 2)
    return y.reshape(B, -1, 2 * H, 2 * W) + bias[:, None, None]


# --- 05: aMUSEd blocks --------------------------------------------------------------------------
def conv_embed_layer_norm(input_ids, params, eps=1e-6):
    x = params["embeddings.weight"][input_ids]
    x = F.layer_norm(x, params["layer_norm.weight"], None, eps=eps)
    return x @ params["conv.weight"][:, :, 0, 0].T + params["conv.bias"]


def ada_rms_norm_shift_first(x, c, params, eps=1e-6):
    m = F.silu(c) @ params["linear.weight"].T + params["linear.bias"]
    shift, scale = np.split(m, 2, axis=-1)
    return F.rms_norm(x, params["norm.weight"], eps=eps) * (1 + scale[:, None]) + shift[:, None]


def convnext_film_then_residual(x, c, params, eps=1e-6):
    p = params
    C = x.shape[-1]
    h = F.conv2d(x.transpose(0, 3, 1, 2), p["depthwise.weight"], p["depthwise.bias"], padding=1,
                 groups=C).transpose(0, 2, 3, 1)
    h = F.rms_norm(h, p["norm.weight"], eps=eps)
    h = F.gelu(F.linear(h, p["channelwise_linear_1.weight"], p["channelwise_linear_1.bias"]))
    h = F.global_response_norm(h, p["channelwise_norm.gamma"], p["channelwise_norm.beta"])
    h = F.linear(h, p["channelwise_linear_2.weight"], p["channelwise_linear_2.bias"])
    scale, shift = np.split(F.linear(F.silu(c), p["cond_embeds_mapper.weight"],
                                     p["cond_embeds_mapper.bias"]), 2, axis=-1)
    return h * (1 + scale[:, None, None]) + shift[:, None, None] + x


def _decode(logits, tokens, step, num_steps, mask_token_id, temperature, u_sample, u_gumbel,
            argmax=False, protect=True):
    B, K, H, W = logits.shape
    probs = F.softmax(logits.reshape(B, K, H * W).transpose(0, 2, 1))      # (B, L, K)
    tok = tokens.reshape(B, -1)
    masked = tok == mask_token_id
    if argmax:
        drawn = probs.argmax(-1)
    else:
        drawn = (np.cumsum(probs, -1) < u_sample.reshape(B, -1, 1)).sum(-1).clip(0, K - 1)
    pred = np.where(masked, drawn, tok)
    if step == num_steps - 1:
        return pred.reshape(tokens.shape), pred.reshape(tokens.shape)
    n = int(H * W * math.cos(math.pi / 2 * (step + 1) / num_steps))
    n = np.clip(np.minimum(masked.sum(-1) - 1, n), 1, None)
    conf = np.log(np.take_along_axis(probs, pred[..., None], -1)[..., 0])
    conf = conf - temperature * np.log(-np.log(u_gumbel.reshape(B, -1)))
    if protect:
        conf[~masked] = np.inf
    cut = np.sort(conf, -1)[np.arange(B), n][:, None]
    nxt = np.where(conf < cut, mask_token_id, pred)
    return nxt.reshape(tokens.shape), pred.reshape(tokens.shape)


def decode_remasks_known(*args):
    return _decode(*args, protect=False)


def decode_argmax(*args):
    return _decode(*args, argmax=True)


# --- 06: backward passes -----------------------------------------------------------------------
def linear_backward_bias_first_axis(dy, x, weight):
    dx = dy @ weight
    dW = dy.reshape(-1, dy.shape[-1]).T @ x.reshape(-1, x.shape[-1])
    return dx, dW, dy.sum(0)                                       # sums over the batch only


def embedding_backward_fancy(dy, ids, num_embeddings):
    dW = np.zeros((num_embeddings, dy.shape[-1]))
    dW[ids] += dy                                                  # repeated ids count once
    return dW


def layer_norm_backward_no_xhat_term(dy, x, weight, eps=1e-5):
    xc = x - x.mean(-1, keepdims=True)
    rstd = 1 / np.sqrt((xc ** 2).mean(-1, keepdims=True) + eps)
    xhat, g = xc * rstd, dy * weight
    axes = tuple(range(x.ndim - 1))
    return rstd * (g - g.mean(-1, keepdims=True)), (dy * xhat).sum(axes), dy.sum(axes)


def softmax_backward_diagonal(dy, p, axis=-1):
    return dy * p * (1 - p)


def attention_backward_unscaled(dout, q, k, v):
    d = q.shape[-1]
    a = q @ k.transpose(0, 1, 3, 2) / math.sqrt(d)
    a = np.exp(a - a.max(-1, keepdims=True))
    a /= a.sum(-1, keepdims=True)
    da = dout @ v.transpose(0, 1, 3, 2)
    ds = a * (da - (da * a).sum(-1, keepdims=True))
    return ds @ k, ds.transpose(0, 1, 3, 2) @ q, a.transpose(0, 1, 3, 2) @ dout


def gelu_backward_cdf_only(dy, x):
    return dy * 0.5 * (1 + erf(x / math.sqrt(2)))


def gelu_backward_tanh(dy, x):
    c = math.sqrt(2 / math.pi)
    t = np.tanh(c * (x + 0.044715 * x ** 3))
    return dy * (0.5 * (1 + t) + 0.5 * x * (1 - t ** 2) * c * (1 + 3 * 0.044715 * x ** 2))


def conv2d_backward_assigning(dy, x, weight, stride=1, padding=0):
    H, W = x.shape[2:]
    kh, kw = weight.shape[2:]
    Ho, Wo = dy.shape[2:]
    xp = np.pad(x, ((0, 0), (0, 0), (padding, padding), (padding, padding)))
    dxp, dw = np.zeros_like(xp), np.zeros_like(weight)
    for i in range(kh):
        for j in range(kw):
            sl = (slice(None), slice(None), slice(i, i + stride * (Ho - 1) + 1, stride),
                  slice(j, j + stride * (Wo - 1) + 1, stride))
            dw[:, :, i, j] = np.einsum("bohw,bchw->oc", dy, xp[sl])
            dxp[sl] = np.einsum("bohw,oc->bchw", dy, weight[:, :, i, j])   # = instead of +=
    return dxp[:, :, padding:padding + H, padding:padding + W], dw, dy.sum((0, 2, 3))


# --- 07: diffusion ------------------------------------------------------------------------------
def cosine_betas_uncapped(num_train_timesteps, max_beta=0.999):
    t = np.linspace(0, 1, num_train_timesteps + 1)
    f = np.cos((t + 0.008) / 1.008 * np.pi / 2) ** 2
    return 1 - f[1:] / f[:-1]


def add_noise_unit_interval(x0, noise, timesteps, alphas_cumprod):
    a = alphas_cumprod[timesteps][:, None, None, None]
    x0 = (x0 + 1) / 2                                              # "images live in [0, 1]"
    return np.sqrt(a) * x0 + np.sqrt(1 - a) * noise


def add_noise_no_sqrt(x0, noise, timesteps, alphas_cumprod):
    a = alphas_cumprod[timesteps][:, None, None, None]
    return a * x0 + np.sqrt(1 - a) * noise


def ddim_step_one_back(model_output, timestep, sample, alphas_cumprod, num_inference_steps):
    a_t = alphas_cumprod[timestep]
    a_prev = alphas_cumprod[timestep - 1] if timestep > 0 else 1.0
    pred_x0 = (sample - math.sqrt(1 - a_t) * model_output) / math.sqrt(a_t)
    return math.sqrt(a_prev) * pred_x0 + math.sqrt(1 - a_prev) * model_output


def guided_epsilon_paper_scale(eps_cond, eps_uncond, guidance_scale):
    return (1 + guidance_scale) * eps_cond - guidance_scale * eps_uncond


# --- 08: MaskGIT --------------------------------------------------------------------------------
def mask_batch_kept_fraction(tokens, u_ratio, u_order, codebook_size):
    B, H, W = tokens.shape
    n = np.clip(np.round(H * W * (1 - np.cos(np.pi / 2 * u_ratio))), 1, H * W).astype(int)
    flat = u_order.reshape(B, -1)
    masked = np.zeros_like(flat, dtype=bool)
    for b in range(B):
        masked[b, np.argsort(flat[b])[:n[b]]] = True
    masked = masked.reshape(B, H, W)
    return np.where(masked, codebook_size, tokens), np.where(masked, tokens, -100)


def mask_batch_last_code(tokens, u_ratio, u_order, codebook_size):
    B, H, W = tokens.shape
    n = np.clip(np.round(H * W * np.cos(np.pi / 2 * u_ratio)), 1, H * W).astype(int)
    flat = u_order.reshape(B, -1)
    masked = np.zeros_like(flat, dtype=bool)
    for b in range(B):
        masked[b, np.argsort(flat[b])[:n[b]]] = True
    masked = masked.reshape(B, H, W)
    return np.where(masked, codebook_size - 1, tokens), np.where(masked, tokens, -100)


def masked_ce_over_batch(logits, labels, label_smoothing=0.0):
    B, K = logits.shape[:2]
    z = np.moveaxis(logits, 1, -1).reshape(-1, K)
    z = z - z.max(1, keepdims=True)
    logp = z - np.log(np.exp(z).sum(1, keepdims=True))
    y = labels.ravel()
    keep = y >= 0
    loss = -(1 - label_smoothing) * logp[keep, y[keep]] - label_smoothing * logp[keep].mean(1)
    return loss.sum() / B                                          # the batch, not the count


def kmeans_step_nan(x, centroids):
    d = ((x[:, None] - centroids[None]) ** 2).sum(-1)
    a = d.argmin(1)
    new = np.stack([x[a == k].mean(0) for k in range(len(centroids))])   # empty -> NaN
    return new, a, d.min(1).mean()


# --- 09: aMUSEd's tokenizer, text encoder and VQ-GAN -------------------------------------------
def _bpe(word, ranks, first_known=False, end_mark=True):
    symbols = list(word[:-1]) + [word[-1] + "</w>"] if end_mark else list(word)
    while True:
        known = [(ranks[p], i) for i, p in enumerate(itertools.pairwise(symbols)) if p in ranks]
        if not known:
            return symbols
        _, i = min(known, key=lambda ri: ri[1]) if first_known else min(known)
        symbols[i:i + 2] = [symbols[i] + symbols[i + 1]]     # one occurrence at a time


def bpe_one_position_at_a_time(word, ranks):
    """Right, and not the reference's algorithm: `tokenizers` merges one position at a time."""
    return _bpe(word, ranks)


def bpe_first_known_pair(word, ranks):
    return _bpe(word, ranks, first_known=True)


def bpe_no_end_mark(word, ranks):
    return _bpe(word, ranks, end_mark=False)


def bpe_loop_over_the_merges(word, ranks):
    symbols = list(word[:-1]) + [word[-1] + "</w>"]
    for (left, right), _ in sorted(ranks.items(), key=lambda kv: kv[1]):
        pairs = list(itertools.pairwise(symbols))
        if (left, right) in pairs:
            i = pairs.index((left, right))                     # the first occurrence only
            symbols = symbols[:i] + [left + right] + symbols[i + 2:]
    return symbols


def _causal(q, k, v, allowed, fill=-np.inf, multiply=False):
    s = q @ k.transpose(0, 1, 3, 2) / math.sqrt(q.shape[-1])
    s = s * allowed if multiply else np.where(allowed, s, fill)
    e = np.exp(s - s.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True) @ v


def causal_triu(q, k, v):
    return _causal(q, k, v, np.triu(np.ones((q.shape[2], k.shape[2]), dtype=bool)))


def causal_scores_times_mask(q, k, v):
    return _causal(q, k, v, np.tril(np.ones((q.shape[2], k.shape[2]))), multiply=True)


def causal_bottom_right(q, k, v):
    L, S = q.shape[2], k.shape[2]
    return _causal(q, k, v, np.tril(np.ones((L, S), dtype=bool), k=S - L))


def _gn(x, num_groups, weight, bias, dy, eps=1e-5, strided=False, mean_term=True):
    B, C, H, W = x.shape
    G = num_groups
    if strided:                                                  # channels c, c + G, ... together
        xt = x.reshape(B, C // G, G, H * W).transpose(0, 2, 1, 3).reshape(B, G, -1)
    else:
        xt = x.reshape(B, G, -1)
    mu, var = xt.mean(-1, keepdims=True), xt.var(-1, keepdims=True)
    r = 1 / np.sqrt(var + eps)
    xhat = (xt - mu) * r

    def back(t):                                                 # (B, G, n) -> (B, C, H, W)
        if strided:
            return t.reshape(B, G, C // G, H * W).transpose(0, 2, 1, 3).reshape(x.shape)
        return t.reshape(x.shape)

    def forth(t):
        if strided:
            return t.reshape(B, C // G, G, H * W).transpose(0, 2, 1, 3).reshape(B, G, -1)
        return t.reshape(B, G, -1)
    w = weight[None, :, None, None]
    y = back(xhat) * w + bias[None, :, None, None]
    g = forth(dy * w)
    dxt = g - xhat * (g * xhat).mean(-1, keepdims=True)
    if mean_term:
        dxt = dxt - g.mean(-1, keepdims=True)
    return y, back(r * dxt), (dy * back(xhat)).sum((0, 2, 3)), dy.sum((0, 2, 3))


def group_norm_strided(x, num_groups, weight, bias, dy, eps=1e-5):
    return _gn(x, num_groups, weight, bias, dy, eps, strided=True)


def group_norm_backward_no_mean(x, num_groups, weight, bias, dy, eps=1e-5):
    return _gn(x, num_groups, weight, bias, dy, eps, mean_term=False)


def _vq(z, codebook, beta, dy, dot=False, legacy=False, autograd_lookup=False, fancy=False):
    if dot:
        idx = (z @ codebook.T).argmax(1)                         # "the most similar code"
    else:
        idx = np.linalg.norm(z[:, None] - codebook[None], axis=-1).argmin(1)
    zq = codebook[idx]
    n = z.size
    loss = np.mean((zq - z) ** 2) * (1 + beta)
    wz, wq = (1.0, beta) if legacy else (beta, 1.0)
    dz = wz * 2 * (z - zq) / n
    dzq = wq * 2 * (zq - z) / n
    if autograd_lookup:                                          # out = codebook[idx]
        dzq = dzq + dy
    else:
        dz = dz + dy
    dcb = np.zeros_like(codebook)
    if fancy:
        dcb[idx] += dzq
    else:
        np.add.at(dcb, idx, dzq)
    return idx, zq, loss, dz, dcb


def vq_most_similar_code(z, codebook, beta, dy):
    return _vq(z, codebook, beta, dy, dot=True)


def vq_legacy_weights(z, codebook, beta, dy):
    return _vq(z, codebook, beta, dy, legacy=True)


def vq_without_straight_through(z, codebook, beta, dy):
    return _vq(z, codebook, beta, dy, autograd_lookup=True)


def vq_fancy_index_add(z, codebook, beta, dy):
    return _vq(z, codebook, beta, dy, fancy=True)


WRONG = [
    ("patchify", patchify_channels_first, "channels_first_in_patch"),
    ("unpatchify", unpatchify_plain_reshape, "plain_reshape"),
    ("timestep_embedding", timestep_embedding_sin_first, "sin_cos_swapped"),
    ("timestep_embedding", timestep_embedding_no_pad, "odd_dim_not_padded"),
    ("layer_norm", layer_norm_unbiased, "unbiased_variance"),
    ("layer_norm", layer_norm_one_pass, "one_pass_variance"),
    ("rms_norm", rms_norm_eps_outside, "eps_outside_sqrt"),
    ("global_response_norm", grn_eps_inside, "eps_inside_sqrt"),
    ("gelu", gelu_tanh, "tanh_approximation"),
    ("softmax", softmax_naive, "no_max_subtraction"),
    ("scaled_dot_product_attention", sdpa_unscaled, "missing_scale"),
    ("multi_head_attention", mha_interleaved_heads, "heads_interleaved"),
    ("uvit_block", uvit_block_skip_first, "skip_order_swapped"),
    ("conv2d", conv2d_true_convolution, "kernel_flipped"),
    ("conv2d", conv2d_channel_last, "transposed_axes"),
    ("depthwise_conv2d", depthwise_sums_channels, "channels_mixed"),
    ("conv_transpose2x2", conv_transpose_out_in, "weight_axes_swapped"),
    ("uvit2d_conv_embed", conv_embed_layer_norm, "layer_norm_instead"),
    ("ada_rms_norm", ada_rms_norm_shift_first, "shift_scale_swapped"),
    ("convnext_block", convnext_film_then_residual, "film_before_residual"),
    ("masked_decoding_step", decode_remasks_known, "known_tokens_remasked"),
    ("masked_decoding_step", decode_argmax, "argmax_not_sampled"),
    ("linear_backward", linear_backward_bias_first_axis, "bias_summed_over_one_axis"),
    ("embedding_backward", embedding_backward_fancy, "fancy_index_add"),
    ("layer_norm_backward", layer_norm_backward_no_xhat_term, "missing_xhat_term"),
    ("softmax_backward", softmax_backward_diagonal, "jacobian_diagonal_only"),
    ("attention_backward", attention_backward_unscaled, "missing_scale"),
    ("gelu_backward", gelu_backward_cdf_only, "missing_x_pdf_term"),
    ("gelu_backward", gelu_backward_tanh, "tanh_derivative"),
    ("conv2d_backward", conv2d_backward_assigning, "dx_overlaps_not_added"),
    ("cosine_betas", cosine_betas_uncapped, "betas_not_capped"),
    ("add_noise", add_noise_unit_interval, "data_rescaled_to_01"),
    ("add_noise", add_noise_no_sqrt, "abar_without_sqrt"),
    ("ddim_step", ddim_step_one_back, "previous_timestep_minus_one"),
    ("guided_epsilon", guided_epsilon_paper_scale, "scale_off_by_one"),
    ("mask_batch", mask_batch_kept_fraction, "cosine_gives_kept_count"),
    ("mask_batch", mask_batch_last_code, "mask_id_inside_codebook"),
    ("masked_cross_entropy", masked_ce_over_batch, "mean_over_batch"),
    ("kmeans_step", kmeans_step_nan, "empty_cluster_nan"),
    ("bpe_merge", bpe_first_known_pair, "first_pair_not_lowest_rank"),
    ("bpe_merge", bpe_no_end_mark, "missing_end_of_word"),
    ("bpe_merge", bpe_loop_over_the_merges, "first_occurrence_only"),
    ("causal_attention", causal_triu, "upper_triangle"),
    ("causal_attention", causal_scores_times_mask, "masked_with_zero"),
    ("causal_attention", causal_bottom_right, "bottom_right_alignment"),
    ("group_norm_forward_backward", group_norm_strided, "strided_groups"),
    ("group_norm_forward_backward", group_norm_backward_no_mean, "missing_mean_term"),
    ("vector_quantize", vq_most_similar_code, "code_norms_dropped"),
    ("vector_quantize", vq_legacy_weights, "commitment_weight_swapped"),
    ("vector_quantize", vq_without_straight_through, "gradient_to_codebook"),
    ("vector_quantize", vq_fancy_index_add, "codebook_gradient_not_accumulated"),
]


@pytest.mark.parametrize("name, fn, hint", WRONG, ids=[f"{n}-{h}" for n, _, h in WRONG])
def test_wrong_solution_fails_with_the_intended_hint(name, fn, hint, capsys):
    result = check(name, fn)
    printed = capsys.readouterr().out
    assert not result and result.status == "failed"
    assert hint in result.diagnoses, result.report()
    assert f"[{hint}]" in printed                     # the hint reaches the student's screen


def test_every_exercise_has_a_wrong_solution_here():
    assert {name for name, _, _ in WRONG} == set(EXERCISES)


def test_the_student_style_helpers_of_notebook_9_pass_when_done_right():
    """Each helper above is right with its switches off (the BPE one merges one position at a
    time, as `tokenizers` does, and still agrees with the reference on every case)."""
    assert check("bpe_merge", bpe_one_position_at_a_time, verbose=False)
    def causal_attention(q, k, v):
        return _causal(q, k, v, np.tril(np.ones((q.shape[2], k.shape[2]), dtype=bool)))
    assert check("causal_attention", causal_attention, verbose=False)
    assert check("group_norm_forward_backward", _gn, verbose=False)
    assert check("vector_quantize", _vq, verbose=False)


def test_the_two_decoding_helpers_pass_when_done_right():
    """The student-style decoder above is right with its switches off: its failures come from the
    one mistake each wrong version makes, not from anything else in it."""
    assert check("masked_decoding_step", _decode, verbose=False)


def test_mistaken_gelu_formulas_are_told_apart():
    no_sqrt2 = check("gelu", lambda x: 0.5 * x * (1 + erf(x)), verbose=False)
    assert no_sqrt2.diagnoses == {"erf_without_sqrt2"}
