"""Chapter 06's labs: code that is broken on purpose (graph pitfalls, the per-phase engine) and the CLI that checks it. Not for reuse."""
