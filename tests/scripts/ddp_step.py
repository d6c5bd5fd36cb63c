"""One training step of the tiny model on a fixed global batch; rank 0 saves loss and grads.

Launched by tests/test_train.py with 1 process (whole batch) or 2 processes (half each):
    accelerate launch --multi_gpu --num_processes 2 tests/scripts/ddp_step.py OUT.pt
"""

import dataclasses
import sys

import torch
from accelerate import Accelerator

from vcb_utils.config import preset
from vcb_utils.distributed import check_world_size, gather_with_grad
from vcb_utils.model import VideoColBERT

CAPTIONS = [
    "a red circle moves left",
    "a blue square appears",
    "a green triangle turns yellow",
    "a yellow circle moves up, then a red square appears",
]


def main(out_path: str) -> None:
    accelerator = Accelerator(cpu=True)
    check_world_size(accelerator.num_processes)
    torch.manual_seed(0)
    cfg = dataclasses.replace(preset("tiny").model, temporal_dropout=0.0)
    model = VideoColBERT(cfg)
    ids, text_mask = model.tokenize(CAPTIONS)
    video = torch.randn(4, 8, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    video_mask = torch.ones(4, 8, dtype=torch.bool)
    video_mask[1, 5:] = False
    model = accelerator.prepare(model)
    per_rank = 4 // accelerator.num_processes
    part = slice(accelerator.process_index * per_rank, (accelerator.process_index + 1) * per_rank)
    losses = model(
        ids[part], text_mask[part], video[part], video_mask[part], gather=gather_with_grad
    )
    accelerator.backward(losses["loss"])
    if accelerator.is_main_process:
        grads = {
            n: p.grad.clone()
            for n, p in accelerator.unwrap_model(model).named_parameters()
            if p.grad is not None
        }
        torch.save(
            {
                "losses": {k: v.item() for k, v in losses.items()},
                "grads": grads,
                "world": accelerator.num_processes,
            },
            out_path,
        )
    accelerator.wait_for_everyone()


if __name__ == "__main__":
    main(sys.argv[1])
