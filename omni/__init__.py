"""The Omni wing: training, data and evaluation of the SNAC-token Omni model (the remote code itself lives at the
repository root).

- `build`: new Omni checkpoints from a Qwen3-family LM or from scratch, saved with processor and remote code.
- `corpus`: reading (audio, transcript) rows from folders, files, LibriSpeech/LibriTTS trees and `datasets`, and
  encoding them once into SNAC codes (resumable Arrow shards), with the row checks training applies too.
- `packing`: the pretraining task mix (TTS / ASR / text) and best-fit packing into rows.
- `trainer`: the modality-weighted loss under gradient accumulation, Muon, token metrics.
- `voice_sft`: LoRA voice fine-tuning of an Omni checkpoint with TRL's `SFTTrainer`.
- `evaluation`: WER/CER, intelligibility, codec distances, per-modality metrics and plots.
- `hub`: model cards and checked publishing to the Hub.
- `standin_codec`: the offline demo's SNAC codec, its quantizer fitted to the shipped corpus (a stand-in, not speech
  units).
"""
