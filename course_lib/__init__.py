"""Inside Inference: the shared library behind the course notebooks.

Each module holds one idea; notebooks import from here so that what a student reads in a cell is
what the tests pin down. Where each module is taught (chapter = notebook number):

    module                 idea                                                      chapters
    device                 pick_device (cuda > mps > cpu), seed_everything           00, all
    paths                  repo-relative locations; display_path for messages        all
    files                  atomic writes, numbered run folders claimed with mkdir    (CLIs, recipes)
    checkpoints            weights_only loading, readable strict-load errors, MANIFEST  01, 07
    notebook               parameter checks, exercise verdicts                       all
    tokenizer              cl100k_base offline; token bytes, half-characters         00, 02, 03
    layers                 RMSNorm, RoPE + positions, attention (MHA/GQA) + the mask rule, Block  03, 05, 06b (inside every model)
    kv_cache               the contiguous pre-allocated KV cache; its memory formula 03
    static_cache           the static KV cache: tensor positions, one compiled graph; generate_static(compile=True)  06, 08
    paged_cache            the paged KV cache: block manager, slot mapping, prefix sharing  06b
    draft, speculative     the draft model; speculative decoding, prompt lookup       08
    rope                   RoPE layouts + weight conversion, low-precision angles, past the trained length  05
    gpt                    the text model: one forward path, infer/prefill/decode_step, load_gpt  00-03, 05, 06
    sampling               one sampling step: temperature, top-k, top-p, penalty     02, 07
    decode                 the decode loop (with or without a cache)                 02, 02b, 03
    stopping               eos ids, stop strings across tokens, finished rows        02b
    scoring                sequence_logprob: sum/mean log-prob, perplexity           02b
    beam                   beam search with Hugging Face's rules                     02b
    timing                 time_fn: warm-up, device sync, median (every timing)     03, benchmarks
    speed                  a decode step's parts; throughput against batch size      03, benchmarks
    trace                  traced generation: every step's top candidates            02
    streaming              UTF-8-safe streaming text out                             03
    batching               left padding, attention masks, generate_batch             02, 03
    compile_watch          graph counts, failed guards, the recompile-limit fallback  06
    graph_pitfalls         the broken steps chapter 06 reproduces (trace, CUDA graphs) 06
    engine, engine_check   seed 002's per-phase static graphs; its test-script CLI    06
    quantize               weight-only int8 (per channel) / int4 (per group) / bf16; bytes, greedy agreement  08b
    quality                sampled lines: well-formed / novel / distinct rates, decoders compared  02, 02b
    plots, widgets         the figures and the interactive explorers                 02, 03
    corpus                 the listing grammar the text model was trained on         00, 02
    act/                   the ACT reasoner, halting loops, ARC-style evaluator, CLI 04, 09
    distributed/           torchrun process groups, tensor-parallel GPT + CLI, step timing  09
    motion/                skeleton, features, VQ-VAE, motion GPT, render, batch CLI 07
    train/                 the recipes that produced every checkpoint                (checkpoints/)
    run_course             every notebook headless with papermill                    (instructors)
    exercises              the exercise convention: stub / check / solution tags      (instructors)
    release                the student release without solutions; --tag-notebooks   (instructors)
    grade                  grading hand-ins with papermill, one CSV row per notebook (instructors)
"""

__version__ = "0.1.0"
