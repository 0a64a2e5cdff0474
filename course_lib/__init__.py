"""Inside Inference: the shared library behind the course notebooks.

The folders show the architecture; each module holds one idea, and notebooks import from here so
that what a student reads in a cell is what the tests pin down. The imports form no circle, and
the model imports no decoding method (tests/test_imports.py reads every import, lazy ones included,
and enforces both). The folders, from what runs the course down to what everything stands on:

    course/        course tooling: notebook parameters and checks, exercises, release, grading, run_course
    labs/          chapter 06's deliberately broken code: the per-phase engine, its check CLI, graph pitfalls
    distributed/   torchrun process groups, the tensor-parallel GPT + CLI, step timing        09
    decoding/      THE decode loop and what plugs into it                                     02, 02b, 03, 08
    caches/        the cache protocol: contiguous, static, paged; compiled steps; quantize    03, 06, 06b, 08b
    text/          the text model, its tokenizer, corpus, RoPE tools, draft model, plots      00-03, 05
    act/ motion/   the ACT reasoner (04, 09) and the text-to-motion pipeline (07)
    core/          layers (one Block for all models), checkpoints, device, paths, files, stats, timing
    train/         the recipes that produced every checkpoint (checkpoints/)

Where each module is taught (chapter = notebook number):

    module                       idea                                                      chapters
    core.device                  pick_device (cuda > mps > cpu), seed_everything           00, all
    core.paths                   repo-relative locations; display_path for messages        all
    core.files                   atomic writes, numbered run folders claimed with mkdir    (CLIs, recipes)
    core.checkpoints             weights_only loading, readable strict-load errors, MANIFEST  01, 07
    core.layers                  RMSNorm, RoPE + positions, attention (MHA/GQA) + the mask rule, Block  03, 05, 06b
    core.stats                   rates with Wilson intervals                               all
    core.timing                  time_fn; compare: interleaved rounds, verdict from the numbers, saved reference  03, 05-09, benchmarks
    text.tokenizer               cl100k_base offline; token bytes, half-characters         00, 02, 03
    text.corpus                  the listing grammar the text model was trained on         00, 02
    text.gpt                     the text model: hidden_states (one forward path), infer/prefill/decode_step, load_gpt  00-03, 05, 06
    text.rope                    RoPE layouts + weight conversion, low-precision angles, past the trained length  05
    text.draft                   the small draft model for speculative decoding            08
    text.plots                   the text track's figures                                  02, 03
    caches.protocol              the cache protocol, KVLayout (for_model), step_logits: the one model step  03, 06, 06b
    caches.kv_cache              the contiguous pre-allocated KV cache; its memory formula 03
    caches.static_cache          the static KV cache: tensor positions, one compiled graph  06, 08
    caches.paged_cache           the paged KV cache: block manager, slot mapping, prefix sharing  06b
    caches.compile_watch         graph counts, failed guards, the recompile-limit fallback  06
    caches.quantize              weight-only int8 / int4 / bf16; bytes, greedy agreement   08b
    decoding.decode              THE decode loop: prefill, step, sample, stop, hooks, block_size policy  02, 02b, 03
    decoding.runners             how a step runs: the runner protocol, uncached and contiguous runners  03
    decoding.sampling            one sampling step: temperature, top-k, top-p, penalty     02, 07
    decoding.stopping            eos ids, stop strings across tokens, finished rows        02b
    decoding.scoring             sequence_logprob: sum/mean log-prob, perplexity           02b
    decoding.beam                beam search with Hugging Face's rules                     02b
    decoding.static              the loop over the static cache: compiled steps, bucketed prompts  06, 08
    decoding.paged               the loop over the paged cache: one request per row, a shared prefix  06b
    decoding.speculative         speculative decoding, prompt lookup                       08
    decoding.trace               traced generation: every step's top candidates            02
    decoding.streaming           UTF-8-safe streaming text out                             03
    decoding.batching            left padding, attention masks, generate_batch             02, 03
    decoding.quality             sampled lines: well-formed / novel / distinct rates       02, 02b
    decoding.speed               a decode step's parts; throughput against batch size      03, benchmarks
    decoding.widgets             the interactive explorers of chapters 02 and 03           02, 03
    labs.graph_pitfalls          the broken steps chapter 06 reproduces (trace, CUDA graphs) 06
    labs.engine, labs.engine_check  the source's per-phase static graphs; its test-script CLI  06
    engine_check                 `python -m course_lib.engine_check`: the published command for labs.engine_check  06
    act/                         the ACT reasoner, halting loops, ARC-style evaluator, CLI 04, 09
    distributed/                 torchrun process groups, tensor-parallel GPT + CLI         09
    motion/                      skeleton, features, VQ-VAE, motion GPT, render, batch CLI 07
    train/                       the recipes that produced every checkpoint                (checkpoints/)
    course.notebook              parameter checks, exercise verdicts                       all
    course.exercises             the exercise convention: stub / check / solution tags      (instructors)
    course.release               the student release without solutions                     (instructors)
    course.grade                 grading hand-ins, one CSV row per notebook                (instructors)
    course.run_course            every notebook headless with papermill                    (instructors)
    course.params                parameters are data: safe YAML, literals only, all problems at once  (instructors)
    course.report                a run's summary.csv / summary.md, HTML pages, index.html  (instructors)
    course.kernels               the kernel manager the tools start notebooks with (encrypted, quiet)  (instructors)

The public names below are importable from the top level (``from course_lib import load_gpt``)
wherever their module lives; they load on first use so that ``import course_lib`` stays cheap.
"""

import sys
from importlib import import_module

__version__ = "0.1.0"


def _one_line_on_ctrl_c_in_commands() -> None:
    """`python -m course_lib....` commands: a Ctrl-C that lands before a command's own handler is in place
    (while it still imports torch, a second or two) prints one line instead of a traceback. Python then
    ends the process by SIGINT as usual (exit status 130 in a shell). While the package is imported by
    `-m`, sys.argv[0] is "-m"; notebooks, tests and programs that import course_lib are left alone."""
    if sys.argv[:1] != ["-m"]:
        return
    previous = sys.excepthook

    def hook(kind, value, tb) -> None:
        if issubclass(kind, KeyboardInterrupt):
            print("interrupted (Ctrl-C)", file=sys.stderr)
        else:
            previous(kind, value, tb)

    sys.excepthook = hook


_one_line_on_ctrl_c_in_commands()

_PUBLIC = {
    "get_encoding": "text.tokenizer",
    "load_checkpoint": "core.checkpoints",
    "CheckpointError": "core.checkpoints",
    "pick_device": "core.device",
    "seed_everything": "core.device",
    "BRANDS": "text.corpus",
    "generate_corpus": "text.corpus",
    "is_well_formed": "text.corpus",
    "grammar_size": "text.corpus",
    "split_of": "text.corpus",
    "GPT": "text.gpt",
    "load_gpt": "text.gpt",
    "load_draft": "text.draft",
    "filter_logits": "decoding.sampling",
    "generate_batch": "decoding.batching",
    "sequence_logprob": "decoding.scoring",
    "beam_search": "decoding.beam",
    "speculative_generate": "decoding.speculative",
    "prompt_lookup_generate": "decoding.speculative",
    "generate_static": "decoding.static",
    "generate_paged": "decoding.paged",
}

__all__ = sorted(_PUBLIC)


def __getattr__(name: str):
    """Load a public name from its module on first use (the one lazy re-export in the package)."""
    if name in _PUBLIC:
        value = getattr(import_module(f"course_lib.{_PUBLIC[name]}"), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'course_lib' has no attribute {name!r}")
