"""Notebook helpers: parameter checks that name the fix, exercise verdicts, numbered run folders."""

import pytest

from course_lib.course.notebook import ParameterError, check_answer, check_param, run_check, show_params
from course_lib.course.run_course import new_run_dir


def test_check_param_messages():
    assert check_param("seed", 3, kind=int, low=0) == 3
    with pytest.raises(ParameterError, match="'seed' must be int, got '3'"):
        check_param("seed", "3", kind=int)
    with pytest.raises(ParameterError, match="'seed' must be int"):
        check_param("seed", True, kind=int)
    with pytest.raises(ParameterError, match=r"'temperature' must be >= 0, got -1"):
        check_param("temperature", -1, kind=(int, float), low=0)
    with pytest.raises(ParameterError, match=r"'device' must be one of \['cpu', 'auto'\]"):
        check_param("device", "gpu", choices=["cpu", "auto"])


def test_show_params_and_answers(capsys):
    show_params(a=1, b="x")
    assert capsys.readouterr().out == "Parameters: a=1, b='x'\n"
    assert check_answer("Ex", True, "right", "wrong") is True
    assert "✅ correct — right" in capsys.readouterr().out
    assert run_check("Ex", lambda: 1 / 0) is False
    assert "ZeroDivisionError" in capsys.readouterr().out


def test_run_dirs_are_new_and_numbered(tmp_path):
    a, b = new_run_dir(tmp_path), new_run_dir(tmp_path)
    assert (a.name, b.name) == ("run-001", "run-002")
    (tmp_path / "run-007").mkdir()
    assert new_run_dir(tmp_path).name == "run-008"
