"""Recipes that produced every shipped checkpoint: `python -m course_lib.train.<name>`."""
