"""Text-to-motion, end to end and small enough for a laptop CPU (chapter 07).

The pipeline of T2M-GPT / ScaMo, shrunk: a procedural 22-joint skeleton (`skeleton`, `synth`,
`captions`) → HumanML3D-style features (`features`) → a VQ-VAE that turns 4 frames into one
code (`quantizers`, `vqvae`) → a frozen text encoder (`text_encoder`) → a GPT over motion codes
built from the course's shared `Block` (`gpt`) → joints → an animated GIF (`render`).
`pipeline` wires the shipped checkpoints together; `inference_batch` is seed 004's batch CLI.

Seed 004 is one of the course's source documents: notebooks/SOURCES.md#seed-004.
"""
