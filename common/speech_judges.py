"""Models that judge generated speech, loaded through transformers: an ASR model that transcribes it (intelligibility)
and a speaker-verification model that embeds it (speaker similarity). Both are loaded before any generation, and a
model that cannot be loaded is named with the reason."""

from __future__ import annotations

import numpy as np
import torch


class PipelineTranscriber:
    """Any transformers ASR pipeline model (Hub id or local folder, e.g. a Whisper) as a transcriber of speech."""

    def __init__(self, model_name_or_path: str, device: str | int | None = None):
        from transformers import pipeline

        self.name = model_name_or_path
        try:
            self.pipe = pipeline("automatic-speech-recognition", model=model_name_or_path, device=device)
        except Exception as error:  # any loading failure is reported with the model's name
            raise ValueError(
                f"--transcriber {model_name_or_path!r} cannot be loaded as a transformers speech-recognition "
                f"pipeline ({type(error).__name__}: {error}). Pass a local folder or Hub id of an ASR model such as "
                "openai/whisper-small, or leave --transcriber out (the checkpoint's own Thinker transcribes)."
            ) from error

    def __call__(self, waveforms: list[np.ndarray], sampling_rate: int) -> list[str]:
        return [
            self.pipe({"raw": np.asarray(w, dtype=np.float32), "sampling_rate": sampling_rate})["text"].strip()
            for w in waveforms
        ]


class SpeakerEncoder:
    """A speaker-verification model with an x-vector head (`AutoModelForAudioXVector`, e.g. `WavLMForXVector` of
    microsoft/wavlm-base-plus-sv) and its feature extractor: one L2-normalised embedding per waveform."""

    def __init__(self, model_name_or_path: str, device: str = "cpu"):
        from transformers import AutoFeatureExtractor, AutoModelForAudioXVector

        self.name, self.device = model_name_or_path, device
        try:
            self.feature_extractor = AutoFeatureExtractor.from_pretrained(model_name_or_path)
            self.model = AutoModelForAudioXVector.from_pretrained(model_name_or_path).to(device).eval()
        except Exception as error:  # any loading failure is reported with the model's name
            raise ValueError(
                f"--speaker_encoder {model_name_or_path!r} cannot be loaded as a speaker-verification model with its "
                f"feature extractor ({type(error).__name__}: {error}). Pass a local folder or Hub id of an x-vector "
                "model such as microsoft/wavlm-base-plus-sv (WavLMForXVector)."
            ) from error
        self.sampling_rate = self.feature_extractor.sampling_rate

    @torch.no_grad()
    def embed(self, waveforms: list[np.ndarray], sampling_rate: int) -> np.ndarray:
        """`(N, D)` unit-norm speaker embeddings of waveforms at `sampling_rate` (resampled to the model's)."""
        import torchaudio.functional

        embeddings = []
        for waveform in waveforms:  # one at a time: no padding enters the statistics pooling
            waveform = torch.as_tensor(np.asarray(waveform, dtype=np.float32))
            if sampling_rate != self.sampling_rate:
                waveform = torchaudio.functional.resample(waveform, sampling_rate, self.sampling_rate)
            inputs = self.feature_extractor(
                waveform.numpy(), sampling_rate=self.sampling_rate, return_tensors="pt"
            ).to(self.device)
            embedding = self.model(**inputs).embeddings[0]
            embeddings.append(torch.nn.functional.normalize(embedding, dim=-1).cpu().numpy())
        return np.stack(embeddings)
