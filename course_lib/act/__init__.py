"""Chapter 04: an ACT (adaptive computation time) reasoner on 4×4 Sudoku, HRM/TRM style.

- `puzzles`   : generating puzzles, the grid encoding, augmentation, the symmetry group and canonical form
- `build_dataset` : the CLI that writes train/test splits to disk
- `data`      : loading a split folder back as tensors
- `model`     : the recurrent reasoner (shared `Block`, non-causal), the carry, the ACT step
- `loss`      : the loss head and metrics with the reference semantics
- `halting`   : forced (seed 000) and dynamic (frozen rows, slot refilling) inference loops
- `split_metrics` : the reference metrics over a whole split, with 95% intervals
- `arc_evaluator` : ARC-style voting over augmented variants, pass@k, submission.json
- `inference` : seed 000's CLI

Seed 000 is one of the course's source documents: notebooks/SOURCES.md#seed-000.
"""
