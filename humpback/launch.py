"""`humpback launch`: `accelerate launch` for the stages in dvc.yaml, with two differences.

- One process on one machine (the default) runs the script in this process: no torchrun, no process
  group, about 2.4 s less per stage (README, "Scaling out"), and exactly the plain `python stages/x.py` run.
- A stage that fails is its own one-line error and exit code: accelerate's launcher would add a
  traceback of the launcher itself (torchrun's ChildFailedError) under it.

Everything else is accelerate's: the arguments are `accelerate launch`'s, and so is the config file
(profiles/accelerate/: DDP on CPU or GPUs; FSDP or DeepSpeed ZeRO on GPUs; several machines).
"""

from __future__ import annotations

import logging
import runpy
import subprocess
import sys


def _single_process(args) -> bool:
    from accelerate.commands.config.config_args import load_config_from_file
    from accelerate.utils import DistributedType

    config = load_config_from_file(args.config_file) if args.config_file else None
    processes = args.num_processes if args.num_processes is not None else getattr(config, "num_processes", 1)
    machines = args.num_machines if args.num_machines is not None else getattr(config, "num_machines", 1)
    plain = config is None or config.distributed_type in (  # not DeepSpeed, FSDP, ...
        DistributedType.NO, DistributedType.MULTI_GPU, DistributedType.MULTI_CPU)
    return processes == 1 and machines == 1 and plain and not (args.use_deepspeed or args.use_fsdp)


def main(argv: list[str]) -> int:
    from accelerate.commands.launch import launch_command, launch_command_parser

    args = launch_command_parser().parse_args(argv)
    if _single_process(args):
        sys.argv = [args.training_script, *args.training_script_args]
        runpy.run_path(args.training_script, run_name="__main__")
        return 0
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError

    args.quiet = True
    logging.getLogger("torch.distributed.elastic").setLevel(logging.CRITICAL)  # its own copy of the failure
    try:
        launch_command(args)
    except ChildFailedError as e:  # the stage printed its error; keep its exit code
        failure = next(iter(e.failures.values()), None)
        return failure.exitcode if failure and failure.exitcode > 0 else 1
    except subprocess.CalledProcessError as e:
        return e.returncode or 1
    return 0
