"""Inside Inference: the shared library behind the course notebooks.

Each module holds one idea (device choice, checkpoints, tokenizer, layers, the text model...).
Notebooks import from here so that what a student reads in a cell is what the tests pin down.
"""

__version__ = "0.1.0"
