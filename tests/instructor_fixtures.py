"""A tiny course notebook (no torch, runs in a second) that follows the exercise convention.

Three exercises cover the shapes the real notebooks use: two stubs in one cell with a separate
check cell and a solution code cell (chapters 02, 03, 05), and a stub+check cell whose answer is a
<details> block in the prose that asks it (chapter 04). SECRET marks every line of a solution.
"""

from __future__ import annotations

import nbformat

SECRET = "SOLUTION-MARKER"
STEM = "90_tiny"


def tiny_notebook() -> dict:
    md, code = nbformat.v4.new_markdown_cell, nbformat.v4.new_code_cell
    cells = [
        md("# Tiny\nA notebook for the instructor-tool tests."),
        code("from course_lib.course.notebook import check_answer, run_check, show_params"),
        md("Parameters:"),
        code('seed = 0\ndevice = "cpu"\nshow_params(seed=seed, device=device)', metadata={"tags": ["parameters"]}),
        md("## Exercises\n**Exercise 1.** Six times seven. **Exercise 2.** Write `double(x)`."),
        code('answer_1 = None   # your number here\n\n\ndef double(x):\n    raise NotImplementedError("your code here")'),
        md("Check your answers:"),
        code('def check_1(value):\n'
             '    return check_answer("Exercise 1", value == 42, "six sevens", "hint: 6 * 7")\n\n\n'
             'def check_2(fn):\n'
             '    return run_check("Exercise 2", lambda: (fn(21) == 42 and fn(-1) == -2, "doubles", "hint: x * 2"))\n\n\n'
             '_ = check_1(answer_1)\n_ = check_2(double)'),
        md("A solution, checked the same way:"),
        code(f'def solution_double(x):\n    return x + x  # {SECRET}\n\n\n_ = check_1(6 * 7)  # {SECRET}\n_ = check_2(solution_double)'),
        md("**Exercise 3.** Which word names this course's topic? Set `word`.\n\n"
           f"<details><summary>Solution</summary>\n\n```python\nword = 'inference'  # {SECRET}\n```\n</details>"),
        code('word = None   # your answer\n_ = check_answer("Exercise 3", word == "inference", "yes", "hint: Inside ...")'),
        md("## Summary\n- done"),
    ]
    nb = nbformat.v4.new_notebook(cells=cells)
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    return nbformat.from_dict(nb)


EXPECTED_TAGS = {5: ["exercise"], 7: ["check"], 8: ["solution"], 9: ["solution"], 10: ["solution"],
                 11: ["exercise", "check"]}
EXERCISES = ["Exercise 1", "Exercise 2", "Exercise 3"]
