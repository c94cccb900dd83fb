"""One process of the distributed tests (tests/test_distributed.py runs it under torchrun, CPU, gloo).

    torchrun --standalone --nproc_per_node 2 tests/distributed_worker.py OUT_DIR

For each strategy it trains the tiny model of ``distributed_case`` and writes, per rank, the full
model and EMA state dicts every process ends up with (``{strategy}_rank{r}.pt``). With FSDP it also
saves a training checkpoint half way (``fsdp_state.pt``) to test resuming it elsewhere.
"""
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from distributed_case import HALF, STEPS, make_trainer  # noqa: E402

from fastuvit.distributed import init_distributed  # noqa: E402


def full_state(module):
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    # every rank gathers the whole state: the replicas can then be compared
    return get_model_state_dict(module, options=StateDictOptions(full_state_dict=True, cpu_offload=False))


def main(out):
    info, device = init_distributed("cpu")
    assert info.world_size == 2 and torch.distributed.get_backend() == "gloo"
    for strategy in ("ddp", "fsdp"):
        trainer = make_trainer(strategy)
        losses = []
        if strategy == "fsdp":
            assert type(trainer.model).__name__.startswith("FSDP")
            losses = trainer.fit(HALF)
            trainer.save(os.path.join(out, "fsdp_state.pt"), weights=False)
        else:
            assert type(trainer.model).__name__ == "DistributedDataParallel"
        losses += trainer.fit(STEPS)
        state = {"model": full_state(trainer.model), "ema": full_state(trainer.ema), "losses": losses}
        state = {k: ({n: t.detach().cpu().clone() for n, t in v.items()} if isinstance(v, dict) else v)
                 for k, v in state.items()}
        torch.save(state, os.path.join(out, f"{strategy}_rank{info.rank}.pt"))
    torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1])
