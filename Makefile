# Inside Inference — every target bootstraps .venv first, so a fresh clone needs only python3 and make.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
NBVAL  := --nbval --nbval-sanitize-with tests/nbval_sanitize.cfg

.PHONY: install lab test test-unit test-notebooks test-gpu course release grade checkpoints bench clean

install: $(STAMP)

$(STAMP): requirements.txt pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 10) else "Python 3.10+ is required")'
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet -r requirements.txt
	$(BIN)/python -m pip install --quiet --no-deps -e .
	touch $(STAMP)

lab: install
	$(BIN)/jupyter lab notebooks/

test: install
	$(BIN)/ruff check .
	$(BIN)/python -m pytest tests -q
	$(BIN)/python -m pytest -q $(NBVAL) notebooks/

test-unit: install
	$(BIN)/python -m pytest tests -q

test-notebooks: install
	$(BIN)/python -m pytest -q $(NBVAL) notebooks/

# On a CUDA machine: the unit tests with COURSE_TEST_DEVICE=cuda, then every notebook with device="auto".
test-gpu: install
	@if ! $(BIN)/python -c 'import sys, torch; sys.exit(not torch.cuda.is_available())'; then \
		echo "no CUDA device: make test-gpu skipped"; exit 0; fi; \
	COURSE_TEST_DEVICE=cuda $(BIN)/python -m pytest tests -q --ignore=tests/test_notebooks_on_device.py && \
	COURSE_TEST_DEVICE=cuda $(BIN)/python -m pytest tests/test_notebooks_on_device.py -q

# Instructors: run every notebook headless into build/ (PARAMS=params.yaml gives per-notebook parameters).
course: install
	$(BIN)/python -m course_lib.course.run_course --out build $(if $(PARAMS),--params $(PARAMS),)

# Instructors: a student copy of every notebook (no solutions) in build/student/.
release: install
	$(BIN)/python -m course_lib.course.release --out build/student

# Instructors: grade hand-ins (make grade SUBMISSIONS=handins/), one CSV row per student and notebook.
grade: install
	$(BIN)/python -m course_lib.course.grade $(SUBMISSIONS) --out $(or $(OUT),grades.csv)

# Re-run every training recipe (overwrites checkpoints/ and MANIFEST.json; see README).
checkpoints: install
	$(BIN)/python -m course_lib.train.all

bench: install
	@for f in benchmarks/*.py; do echo "== $$f"; $(BIN)/python $$f || exit 1; done

clean:
	rm -rf build runs .pytest_cache
