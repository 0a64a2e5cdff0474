"""The decode loop and what plugs into it: runners, sampling, stopping, beam search, speculative decoding, streaming, batching."""
