"""Tensor-parallel text generation, one process per rank, started by torchrun.

    torchrun --nproc_per_node 2 -m course_lib.distributed.generate --prompt "Sunbeam" --max_new_tokens 20
    torchrun --nproc_per_node 2 -m course_lib.distributed.generate --prompt "Sunbeam" --temperature 0.8 --top_k 50 --seed 3

Every rank loads the checkpoint, keeps only its shard (heads, hidden units, vocabulary rows),
and runs the same decode loop; rank 0 alone prints the text. Greedy output is the single-process
model's, token for token; sampling with --seed draws the same random numbers on every rank, so it
gives the single-process tokens for the same seed too. --check makes rank 0 also run the
single-process model and say whether the tokens are identical.

Across machines: the same command on every node with --nnodes 2 --node_rank i (or --rdzv-backend
c10d --rdzv-endpoint HOST:PORT --rdzv-id JOB); on GPUs (--device cuda) the backend is NCCL.
Exit codes: 0 done, 2 bad input or setup, 1 a rank failed (the others stop after --timeout).
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import torch

from course_lib.core.checkpoints import CheckpointError
from course_lib.decoding.decode import encode_prompt
from course_lib.decoding.sampling import check_sampling_args
from course_lib.distributed.comm import Comm
from course_lib.distributed.process_group import (
    DEFAULT_TIMEOUT,
    DistSetupError,
    check_divides,
    check_env,
    init_from_env,
    shutdown,
    timeout_message,
)
from course_lib.distributed.tp_gpt import TPGPT, tp_generate
from course_lib.text.gpt import load_gpt
from course_lib.text.tokenizer import get_encoding

COMMAND = "-m course_lib.distributed.generate --prompt ... --max_new_tokens ..."


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="torchrun --nproc_per_node N -m course_lib.distributed.generate",
                                 description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--prompt", required=True, help='the text to continue ("" starts from <|endoftext|>)')
    ap.add_argument("--max_new_tokens", type=int, default=20)
    ap.add_argument("--temperature", type=float, default=0.0, help="0 (default) is greedy")
    ap.add_argument("--top_k", type=int, default=None)
    ap.add_argument("--top_p", type=float, default=None)
    ap.add_argument("--seed", type=int, default=0, help="seeds the sampling generator, identically on every rank")
    ap.add_argument("--checkpoint", default=None, help="text model checkpoint (default: the shipped one)")
    ap.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"), help="cpu -> gloo, cuda -> NCCL")
    ap.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT,
                    help=f"seconds a collective waits for the other ranks (default {DEFAULT_TIMEOUT:g})")
    ap.add_argument("--check", action="store_true", help="rank 0 also runs the single-process model and compares tokens")
    ap.add_argument("--simulate_failure", type=int, default=None, metavar="RANK",
                    help="this rank raises before decoding (to see how the others stop)")
    return ap


def check_args(ap: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    if args.max_new_tokens < 1:
        ap.error("--max_new_tokens must be >= 1")
    if not args.timeout > 0:
        ap.error("--timeout must be > 0 seconds")
    try:
        check_sampling_args(args.temperature, args.top_k, args.top_p)
    except ValueError as exc:
        ap.error(f"{exc}")


def error(rank: int, msg: str) -> int:
    if rank == 0:  # every rank hits the same setup error: say it once
        print(f"error: {msg}", file=sys.stderr)
    return 2


def main(argv: list[str] | None = None) -> int:
    ap = build_parser()
    args = ap.parse_args(argv)
    check_args(ap, args)
    rank = int(os.environ.get("RANK", 0))
    try:
        check_env(COMMAND)
    except DistSetupError as exc:
        return error(0, str(exc))
    world = int(os.environ["WORLD_SIZE"])
    try:
        model = load_gpt(args.checkpoint, device="cpu")
    except (CheckpointError, FileNotFoundError) as exc:
        return error(rank, f"--checkpoint: {exc}")
    enc = get_encoding()
    ids = encode_prompt(enc, args.prompt, model.block_size)
    if len(ids) + args.max_new_tokens > model.block_size:
        return error(rank, f"prompt ({len(ids)} tokens) + --max_new_tokens {args.max_new_tokens} exceeds the "
                           f"context of {model.block_size} tokens; ask for fewer tokens")
    try:
        check_divides(world, model.h_params["n_head"], model.n_kv_head)
        info = init_from_env(args.device, args.timeout, COMMAND)
    except DistSetupError as exc:
        return error(rank, str(exc))
    loaded = {"model": model}  # run() takes it out, so that no frame keeps the full model alive
    del model
    try:
        return run(args, loaded, enc, ids, info)
    except RuntimeError as exc:  # a collective that failed or timed out (torch.distributed.DistError is one)
        print(timeout_message(info.rank, args.timeout, exc), file=sys.stderr)
        return 1
    finally:
        shutdown()


def run(args: argparse.Namespace, loaded: dict, enc, ids: list[int], info) -> int:
    model = loaded.pop("model").to(info.device)
    tp = TPGPT(model, Comm(info.rank, info.world_size))
    reference = model if (args.check and info.rank == 0) else None
    del model  # from here on only the shard stays in this process (and, with --check, rank 0's reference)
    if args.simulate_failure == info.rank:
        raise SystemExit(f"rank {info.rank}: simulated failure (--simulate_failure {info.rank})")
    idx = torch.tensor([ids], device=info.device)
    gen = torch.Generator(device=info.device).manual_seed(args.seed)  # the same stream on every rank
    t0 = time.perf_counter()
    out = tp_generate(tp, idx, args.max_new_tokens, args.temperature, args.top_k, args.top_p, generator=gen)
    seconds = time.perf_counter() - t0
    if info.rank == 0:
        print(enc.decode(out[0].tolist()))
        print(f"[{info.world_size} processes, {info.backend}: {args.max_new_tokens} tokens in {seconds:.2f} s]",
              file=sys.stderr)
        if reference is not None:
            gen1 = torch.Generator(device=info.device).manual_seed(args.seed)
            single = reference.generate(idx, args.max_new_tokens, args.temperature, args.top_k, args.top_p, generator=gen1)
            same = torch.equal(single, out)
            print(f"single-process: {'identical tokens' if same else 'DIFFERENT tokens: ' + repr(enc.decode(single[0].tolist()))}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
