"""Key/value caches behind one protocol (contiguous, static, paged), compiled steps, weight-only quantization."""
