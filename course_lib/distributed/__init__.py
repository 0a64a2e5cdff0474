"""Inference across processes (chapter 09): `torchrun` + `torch.distributed`, no home-made launcher.

    process_group   init_from_env (gloo on a CPU, NCCL on CUDA), clear setup errors, a timeout
    comm            the collectives the model needs, timed and counted (all-reduce, all-gather)
    tp_layers       Megatron-style shards: column/row-parallel linears, vocabulary-parallel table
    tp_gpt          the course GPT split over ranks; decoding with a cache holding only local heads
    generate        the CLI: torchrun --nproc_per_node 2 -m course_lib.distributed.generate --prompt ...
    gather          sharding a dataset by rank and collecting per-rank results (ACT evaluation)
    launch          starting torchrun from Python (notebook, tests, benchmark) on a free port
    step_timing     ms per decode step, time in collectives, bytes per rank (benchmarks/distributed.py)
"""

from course_lib.distributed.process_group import DistSetupError, init_from_env, launched_by_torchrun

__all__ = ["DistSetupError", "init_from_env", "launched_by_torchrun"]
