"""LoRA SFT of the backward and forward models (inverse_sft, seed_sft, finetune).

- sft.py: the run itself (`train_lora`) and its precision flags;
- checkpoints.py: the run key, locked checkpoint directories and resuming after a kill;
- repro.py: outs that are the same on every machine (the adapter, its metadata, DVCLive);
- compat.py: every private name of trl, the Trainer and DVCLive that the others rely on.
"""

from .checkpoints import CHECKPOINT_STEPS, checkpoint_steps, run_key
from .repro import ADAPTER_METADATA, name_base_by_reference
from .sft import base_load_dtype, precision_flags, train_lora

__all__ = ["ADAPTER_METADATA", "CHECKPOINT_STEPS", "base_load_dtype", "checkpoint_steps", "name_base_by_reference",
           "precision_flags", "run_key", "train_lora"]
