# Copyright 2026 The qwen-omni authors. Licensed under the Apache License, Version 2.0.
"""
The offline stand-in SNAC codec: a SNAC of the 24 kHz layout whose quantizer is fitted to a speech corpus, for runs
that cannot download `hubertsiuzdak/snac_24khz`.

A SNAC with random weights is useless as a tokenizer: its encoder's latents are dominated by a constant offset, so
(after SNAC's L2-normalised nearest-code search) nearly every frame gets the same code (per-codebook perplexity ~1.6
on the shipped corpus), and a language model trained on such codes reaches 99% audio-token accuracy by predicting a
constant. [`fit_standin_codec`] keeps the random encoder and decoder but fits the residual vector quantizer to the
corpus, level by level, coarsest first, each level on what the levels before it leave:

1. the residual is average-pooled by the level's stride, as `VectorQuantize.forward` does;
2. `in_proj` becomes the whitening PCA of the pooled residual (centred, top `codebook_dim` components, unit
   variance), `out_proj` its inverse (so `out_proj(in_proj(x))` is `x` projected on those components);
3. the codebook is the spherical k-means of the projected frames (assignment by cosine similarity, which is SNAC's
   own nearest-code rule; centroids are the mean of their frames, the least-squares reconstruction).

The codes then spread over the codebook (perplexities in the hundreds on the shipped corpus) and follow the audio.
The decoder stays random: decoded audio is not speech, and the codes are features of a random encoder, not learned
speech units. It is a stand-in that lets the offline demo show whether the pipeline learns, nothing more.

[`standin_codec`] fits once and caches the codec (SNAC's `config.json` + `pytorch_model.bin`, loadable by
`snac.SNAC.from_pretrained` and [`SNACAudioTokenizer.from_pretrained`]) under a folder named after a fingerprint of
the fitting clips, the config and the seed.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from transformers.utils import logging


logger = logging.get_logger(__name__)

# The 24 kHz SNAC's rates and frame layout (hop 512, vq_strides [4, 2, 1]: 7 tokens per 85 ms frame), with small
# widths and 1024 codes per codebook instead of 4096, so that the offline demo encodes and trains on 2 CPU cores in
# minutes (a 4096-code vocabulary makes each step ~4x slower there).
STANDIN_CODEC_CONFIG = dict(
    sampling_rate=24000,
    encoder_dim=16,
    encoder_rates=[2, 4, 8, 8],
    decoder_dim=64,
    decoder_rates=[8, 8, 4, 2],
    attn_window_size=None,
    codebook_size=1024,
    codebook_dim=8,
    vq_strides=[4, 2, 1],
    noise=True,
    depthwise=True,
)
# bump when the fitting procedure changes, so that cached codecs of the old procedure are not reused
STANDIN_FORMAT_VERSION = 1
STANDIN_INFO_NAME = "standin_codec.json"
# Clips beyond this much audio are not used for fitting (the encoder pass costs ~4% of real time on one core).
DEFAULT_MAX_FIT_SECONDS = 600.0


# How reports and logs name the offline default codec.
STANDIN_CODEC_NOTE = (
    "a STAND-IN SNAC codec of the 24 kHz layout: random encoder and decoder, codebooks fitted to this corpus by "
    "k-means. Its codes are features of a random encoder, not learned speech units, and its decoded audio is not "
    "speech; pass --codec hubertsiuzdak/snac_24khz for a real model."
)


def _pooled_frames(residual: torch.Tensor, stride: int) -> torch.Tensor:
    """`(frames, dim)`: the residual `(1, dim, time)` average-pooled by `stride`."""
    return (F.avg_pool1d(residual, stride, stride) if stride > 1 else residual)[0].T


def _whitening_pca(frames: torch.Tensor, num_components: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """`(mean, projection, scales)`: `(x - mean) @ projection / scales` has uncorrelated unit-variance columns."""
    mean = frames.mean(0)
    centred = (frames - mean).double()
    covariance = centred.T @ centred / max(len(frames) - 1, 1)
    eigenvalues, eigenvectors = torch.linalg.eigh(covariance)  # ascending
    order = torch.arange(len(eigenvalues) - 1, len(eigenvalues) - 1 - num_components, -1)
    # eigh fixes each vector only up to sign: make the largest entry positive, so the fit is reproducible
    vectors = eigenvectors[:, order]
    signs = torch.sign(vectors.gather(0, vectors.abs().argmax(0, keepdim=True)))
    vectors = vectors * signs
    scales = eigenvalues[order].clamp(min=eigenvalues[-1] * 1e-10 + 1e-20).sqrt()
    return mean, vectors.float(), scales.float()


def _spherical_kmeans(
    vectors: torch.Tensor, num_codes: int, iterations: int, generator: torch.Generator
) -> torch.Tensor:
    """
    `num_codes` centroids of `vectors` `(n, dim)` under SNAC's assignment rule (largest cosine similarity). Each
    centroid is the mean of its vectors; an empty code is re-seeded with the vector its centroid fits worst.
    """
    unit = F.normalize(vectors, dim=-1)
    if len(vectors) >= num_codes:
        centroids = vectors[torch.randperm(len(vectors), generator=generator)[:num_codes]].clone()
    else:
        # fewer frames than codes: every frame starts a code, the rest start at jittered copies of frames
        extra = vectors[torch.randint(len(vectors), (num_codes - len(vectors),), generator=generator)]
        jitter = torch.randn(extra.shape, generator=generator) * vectors.std(0) * 0.1
        centroids = torch.cat([vectors, extra + jitter])
    for _ in range(iterations):
        directions = F.normalize(centroids, dim=-1).T
        # in chunks: the whole (vectors x codes) similarity matrix of a large corpus would not fit in memory
        best, assignment = (
            torch.cat(parts) for parts in zip(*((chunk @ directions).max(dim=1) for chunk in unit.split(4096)))
        )
        counts = torch.bincount(assignment, minlength=num_codes)
        sums = torch.zeros_like(centroids).index_add_(0, assignment, vectors)
        used = counts > 0
        centroids[used] = sums[used] / counts[used, None]
        empty = (~used).nonzero().flatten()
        if len(empty):
            worst = best.argsort()[: len(empty)]
            centroids[empty[: len(worst)]] = vectors[worst]
    return centroids


@torch.no_grad()
def fit_quantizer(codec, latents: Sequence[torch.Tensor], seed: int = 0, kmeans_iterations: int = 30) -> None:
    """
    Fit `codec.quantizer` (a `snac.vq.ResidualVectorQuantize`) in place to encoder latents, one `(latent_dim, time)`
    tensor per clip with `time` a multiple of the coarsest stride; see the module docstring for the procedure.
    Each clip also serves shifted by 1 .. stride-1 latent frames, so the coarse levels see every pooling phase.
    """
    generator = torch.Generator().manual_seed(seed)
    coarsest = codec.vq_strides[0]
    segments = []
    for latent in latents:
        for shift in range(coarsest):
            usable = (latent.shape[-1] - shift) // coarsest * coarsest
            if usable > 0:
                segments.append(latent[:, shift : shift + usable].float())
    # Every segment is a whole number of coarsest frames, so no pooling window of any level straddles two segments:
    # quantizing the segments end to end is quantizing each alone, in one call per level.
    residual = torch.cat(segments, dim=-1)[None]
    for quantizer in codec.quantizer.quantizers:
        frames = _pooled_frames(residual, quantizer.stride)
        mean, projection, scales = _whitening_pca(frames, quantizer.codebook_dim)
        in_weight = projection.T / scales[:, None]
        quantizer.in_proj.weight = in_weight[..., None]  # weight_norm's right_inverse sets g and v
        quantizer.in_proj.bias.copy_(-in_weight @ mean)
        quantizer.out_proj.weight = (projection * scales)[..., None]
        quantizer.out_proj.bias.copy_(mean)
        projected = (frames - mean) @ projection / scales
        quantizer.codebook.weight.copy_(
            _spherical_kmeans(projected, quantizer.codebook_size, kmeans_iterations, generator)
        )
        residual = residual - quantizer(residual)[0]


def _fit_latents(codec, waveforms: Sequence[np.ndarray]) -> list[torch.Tensor]:
    """Encoder latents of each clip (zero-padded to whole frames, as the feature extractor pads)."""
    samples_per_frame = int(codec.hop_length) * codec.vq_strides[0]
    latents = []
    with torch.inference_mode():
        for waveform in waveforms:
            frames = -(-len(waveform) // samples_per_frame)
            clip = torch.zeros(1, 1, frames * samples_per_frame)
            clip[0, 0, : len(waveform)] = torch.as_tensor(waveform, dtype=torch.float32)
            latents.append(codec.encoder(codec.preprocess(clip))[0, :, : frames * codec.vq_strides[0]].clone())
    return latents


def fit_standin_codec(
    waveforms: Sequence[np.ndarray],
    config: dict | None = None,
    seed: int = 0,
    kmeans_iterations: int = 30,
):
    """
    A `snac.SNAC(**config)` with random encoder and decoder (seeded by `seed`) whose quantizer is fitted to
    `waveforms` (mono float arrays at `config["sampling_rate"]`). Same waveforms, config and seed give the same
    weights.
    """
    import snac

    config = dict(STANDIN_CODEC_CONFIG if config is None else config)
    if not waveforms:
        raise ValueError("fit_standin_codec needs at least one waveform to fit the codebooks on.")
    torch.manual_seed(seed)
    codec = snac.SNAC(**config).eval()
    fit_quantizer(codec, _fit_latents(codec, waveforms), seed=seed, kmeans_iterations=kmeans_iterations)
    return codec


def _fingerprint(waveforms: Sequence[np.ndarray], config: dict, seed: int, kmeans_iterations: int) -> str:
    digest = hashlib.sha256(
        json.dumps(
            {
                "config": config,
                "seed": seed,
                "kmeans_iterations": kmeans_iterations,
                "version": STANDIN_FORMAT_VERSION,
            },
            sort_keys=True,
        ).encode()
    )
    for waveform in waveforms:
        digest.update(np.ascontiguousarray(waveform, dtype=np.float32).tobytes())
        digest.update(b"|")
    return digest.hexdigest()[:16]


def read_fit_waveforms(
    rows, sampling_rate: int, max_seconds: float | None = DEFAULT_MAX_FIT_SECONDS
) -> tuple[list[np.ndarray], int]:
    """
    Decode (and resample to `sampling_rate`) the audio of corpus rows in their order until `max_seconds` of audio
    are read; returns `(waveforms, number of rows not used)`, the rows past the limit and unreadable ones.
    """
    from ..common.audio import read_audio, resample

    waveforms, total, unused = [], 0.0, 0
    for row in rows:
        if max_seconds is not None and total >= max_seconds:
            unused += 1
            continue
        try:
            waveform, rate = read_audio(row["audio"])
        except Exception as error:  # noqa: BLE001 - preparing the data skips and lists the same rows
            logger.warning(f"Stand-in codec: skipping unreadable audio {row.get('id', row['audio'])!r} ({error}).")
            unused += 1
            continue
        waveforms.append(resample(waveform, rate, sampling_rate))
        total += len(waveform) / sampling_rate
    return waveforms, unused


def standin_codec(
    rows,
    cache_dir: str | os.PathLike,
    config: dict | None = None,
    seed: int = 0,
    kmeans_iterations: int = 30,
    max_seconds: float | None = DEFAULT_MAX_FIT_SECONDS,
) -> Path:
    """
    The folder of the stand-in codec fitted to the audio of `rows` (corpus rows with an `audio` column, as
    [`~common.clips.load_audio_text_rows`] returns), fitted on first use and cached as
    `cache_dir/standin_snac_24khz-<fingerprint>` (a SNAC checkpoint folder plus `standin_codec.json`, which records
    how it was fitted).
    """
    config = dict(STANDIN_CODEC_CONFIG if config is None else config)
    waveforms, unused = read_fit_waveforms(rows, config["sampling_rate"], max_seconds)
    if not waveforms:
        raise ValueError("No readable audio to fit the stand-in codec on; check the corpus or pass --codec.")
    fingerprint = _fingerprint(waveforms, config, seed, kmeans_iterations)
    path = Path(cache_dir) / f"standin_snac_24khz-{fingerprint}"
    if (path / STANDIN_INFO_NAME).exists():
        logger.info(f"Reusing the stand-in codec in {path}.")
        return path
    seconds = sum(len(w) for w in waveforms) / config["sampling_rate"]
    logger.info(
        f"Fitting the stand-in codec's codebooks to {len(waveforms)} clips ({seconds:.1f} s"
        + (f"; {unused} clips not used" if unused else "")
        + f") -> {path}."
    )
    codec = fit_standin_codec(waveforms, config, seed=seed, kmeans_iterations=kmeans_iterations)
    tmp = path.with_name(path.name + ".tmp")
    tmp.mkdir(parents=True, exist_ok=True)
    (tmp / "config.json").write_text(json.dumps(config))
    torch.save(codec.state_dict(), tmp / "pytorch_model.bin")
    info = {
        "stand_in": True,
        "format_version": STANDIN_FORMAT_VERSION,
        "seed": seed,
        "kmeans_iterations": kmeans_iterations,
        "fit_clips": len(waveforms),
        "fit_seconds": seconds,
        "clips_not_used": unused,
    }
    (tmp / STANDIN_INFO_NAME).write_text(json.dumps(info, indent=2))
    if path.exists():
        import shutil

        shutil.rmtree(path)
    tmp.rename(path)
    return path


def is_standin_codec(path: str | os.PathLike) -> bool:
    """Whether `path` is a codec folder written by [`standin_codec`]."""
    return (Path(path) / STANDIN_INFO_NAME).is_file()
