"""A checkpoint saved by the first release (tests/fixtures/omni_checkpoint_v0, written by commit 73b209c's code: its
processor_config.json holds the SNAC codec inside the feature extractor) still loads with today's classes and gives the
same logits, audio token ids and decoded waveform as it did then (tests/fixtures/omni_checkpoint_v0_reference.pt)."""

from pathlib import Path

import numpy as np
import torch

from qwen_omni import OmniForCausalLM, OmniProcessor


FIXTURES = Path(__file__).parent / "fixtures"
CHECKPOINT = FIXTURES / "omni_checkpoint_v0"


def test_first_release_checkpoint_loads_and_behaves_as_it_did():
    reference = torch.load(FIXTURES / "omni_checkpoint_v0_reference.pt")
    model = OmniForCausalLM.from_pretrained(CHECKPOINT).eval()
    processor = OmniProcessor.from_pretrained(CHECKPOINT)

    inputs = processor(text="hello there.", return_tensors="pt")
    torch.testing.assert_close(inputs["input_ids"], reference["input_ids"], rtol=0, atol=0)
    with torch.no_grad():
        last_logits = model(**inputs).logits[0, -1]
    torch.testing.assert_close(last_logits, reference["last_logits"], rtol=1e-5, atol=1e-5)

    waveform = reference["waveform"].numpy()
    audio_ids = processor.audio_to_ids(waveform, sampling_rate=24000)[0]
    torch.testing.assert_close(audio_ids, reference["audio_token_ids"], rtol=0, atol=0)
    decoded = np.asarray(processor.ids_to_audio(audio_ids))
    np.testing.assert_allclose(decoded, reference["decoded"].numpy(), atol=1e-5)
