"""The text model and what it is made of: tokenizer, corpus, GPT, RoPE tools, the draft model, the text track's plots."""
