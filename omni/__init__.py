"""The Omni wing: training, data and evaluation of the SNAC-token Omni model (the remote code itself lives at the
repository root; what both wings share is in `common/`).

- `build`: new Omni checkpoints from a Qwen3-family LM or from scratch, saved with processor and remote code.
- `corpus`: encoding (audio, transcript) rows once into SNAC codes (resumable Arrow shards), with the row checks
  training applies too (reading the rows is `common.clips`).
- `command_corpus`: the offline main job's corpus: sentences of a bounded grammar spoken by espeak-ng voices.
- `packing`: the pretraining task mix (TTS / ASR / text) and best-fit packing into rows.
- `pretraining`: `train/pretrain.py`'s arguments, model, prepared rows and held-out splits.
- `pretrain_report`: the end-of-run report on held-out sentences and speakers, with floors and margins.
- `trainer`: the modality-weighted loss under gradient accumulation, Muon, token metrics.
- `speech`: long text, piece by piece (`generate_speech`).
- `voice_sft`: LoRA voice fine-tuning of an Omni checkpoint with TRL's `SFTTrainer`.
- `evaluation`: intelligibility, codec distances, per-modality metrics and plots (metric rules in `common.metrics`).
- `standin_codec`: the offline demo's SNAC codec, its quantizer fitted to the corpus (a stand-in, not speech units).
"""
