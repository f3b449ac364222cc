"""Build the merge engine's live model without reading its weights twice.

    model = empty_model(base_checkpoint, torch.float32, torch.device("cpu"))   # None: use from_pretrained
    read_into(param, base_checkpoint, name)                                    # one read, into place

`empty_model` constructs the base's architecture from its config.json with weight
initialisation skipped (the memory is allocated, never written), so the engine reads every
checkpoint tensor once, straight into the parameter that holds it. It gives up (None) where
the in-memory names and the checkpoint's disagree (transformers renames some on load, or a
parameter has no tensor in the checkpoint): `from_pretrained` knows those mappings.
"""

from __future__ import annotations

import torch

from automerge.checkpoints import Checkpoint


def empty_model(ckpt: Checkpoint, dtype: torch.dtype, device: torch.device) -> torch.nn.Module | None:
    """The base's model in `dtype` on `device`, weights uninitialised; None when a checkpoint
    tensor has no parameter of the same name, or a parameter (tied ones aside) no tensor."""
    from transformers import AutoConfig, AutoModelForCausalLM
    from transformers.initialization import no_init_weights

    config = AutoConfig.from_pretrained(ckpt.path)
    with no_init_weights(), torch.device(device):
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    model.tie_weights()
    state = model.state_dict(keep_vars=True)
    names = set(ckpt.names)
    if not names <= set(state):
        return None
    covered = {state[n].data_ptr() for n in names}
    if any(k not in names and v.data_ptr() not in covered for k, v in state.items()):
        return None
    return model.eval().requires_grad_(False)


def read_into(dst: torch.Tensor, ckpt: Checkpoint, name: str) -> None:
    """dst <- the checkpoint's tensor, cast on the way (one read; NaN/Inf refused by `read`)."""
    dst.copy_(ckpt.read(name))
