"""`python -m course_lib.engine_check`: the command the course design names for seed 002's test script.

The code lives with chapter 06's other lab pieces, in `course_lib.labs.engine_check`; this entry point
keeps the published command working. Seed 002: notebooks/SOURCES.md#seed-002.
"""

from __future__ import annotations

import sys

from course_lib.labs.engine_check import main

if __name__ == "__main__":
    sys.exit(main())
