# Inside Inference — every target bootstraps .venv first, so a fresh clone needs only python3 and make.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
TEST_WORKERS ?= 2
NBVAL  := --nbval --nbval-sanitize-with tests/nbval_sanitize.cfg
# JupyterLab refuses to start as root without --allow-root (root is the default user in containers).
USER_ID  ?= $(shell id -u)
ROOT_ARG := $(if $(filter 0,$(USER_ID)),--allow-root,)
LAB_ARGS ?=
# Kernels with CurveZMQ keys (jupyter_client >= 8.10, pyzmq with Curve): no "running over TCP without encryption".
ENCRYPT  := $$($(BIN)/python -c 'import zmq; print("--KernelManager.transport_encryption=auto" if zmq.has("curve") else "")')

.PHONY: install lab lab-student test test-unit test-notebooks test-gpu wheelhouse course release grade checkpoints bench clean

install: $(STAMP)

$(STAMP): requirements.txt pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 10) else "Python 3.10+ is required")'
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet -r requirements.txt
	$(BIN)/python -m pip install --quiet --no-deps -e .
	touch $(STAMP)

# The course notebooks, solutions included. Extra flags: make lab LAB_ARGS="--port 8890 --no-browser".
lab: install
	$(BIN)/jupyter lab $(ROOT_ARG) $(ENCRYPT) $(LAB_ARGS) notebooks/

# Self-learners: a student copy (no solutions) in build/student/, made once and then kept, so your
# answers survive the next `make lab-student` (delete build/student for a fresh copy).
lab-student: install
	@if [ -e build/student ]; then echo "opening your existing copy in build/student (delete it for a fresh release)"; \
	else $(BIN)/python -m course_lib.course.release --out build/student; fi
	$(BIN)/jupyter lab $(ROOT_ARG) $(ENCRYPT) $(LAB_ARGS) build/student/

# One pytest run, two workers (pytest-xdist): unit tests and every notebook's strict nbval share the cores;
# --dist loadscope keeps each test module, and each notebook's cells, on one worker (one kernel per notebook).
# One thread per process (notebooks set their own `threads`): two workers, two cores, no oversubscription.
test: install
	$(BIN)/ruff check .
	OMP_NUM_THREADS=1 TORCHINDUCTOR_COMPILE_THREADS=1 \
		$(BIN)/python -m pytest -q -n $(TEST_WORKERS) --dist loadscope --durations=30 tests $(NBVAL) notebooks/

test-unit: install
	$(BIN)/python -m pytest tests -q

test-notebooks: install
	$(BIN)/python -m pytest -q $(NBVAL) notebooks/

# A GPU machine without network. On a machine with network (same OS, CPU architecture and Python
# version as the GPU machine, or pass pip's --platform/--python-version/--only-binary=:all: in WHEEL_ARGS):
#   make wheelhouse           every requirement except torch, as wheels, into wheelhouse/
# then copy the clone (with wheelhouse/) over and, with the GPU machine's own CUDA torch:
#   make test-gpu PYTHON=/path/to/python-with-cuda-torch
# test-gpu makes .venv-gpu with --system-site-packages (that interpreter's torch is used), installs from
# wheelhouse/ only, and runs tests/gpu_run.py: unit tests on cuda, every notebook with device="auto",
# decode tokens/s at batch 1 and 16, report in benchmarks/gpu_report.md. Without CUDA: one line, exit 0.
WHEELHOUSE := wheelhouse
GPU_VENV   := build/venv-gpu
WHEEL_ARGS ?=

wheelhouse:
	mkdir -p $(WHEELHOUSE)
	grep -v '^torch==' requirements.txt > $(WHEELHOUSE)/requirements.txt
	$(PYTHON) -m pip download --dest $(WHEELHOUSE) $(WHEEL_ARGS) -r $(WHEELHOUSE)/requirements.txt

test-gpu:
	@if ! $(PYTHON) -c 'import sys, torch; sys.exit(not torch.cuda.is_available())' 2>/dev/null; then \
		echo "no CUDA device (or no torch) in $(PYTHON): make test-gpu skipped (pass PYTHON=/path/to/python-with-cuda-torch)"; exit 0; fi; \
	test -f $(WHEELHOUSE)/requirements.txt || { echo "no $(WHEELHOUSE)/: run make wheelhouse on a machine with network first"; exit 2; }; \
	set -e; \
	test -x $(GPU_VENV)/bin/python || $(PYTHON) -m venv --system-site-packages $(GPU_VENV); \
	$(GPU_VENV)/bin/python -m pip install --quiet --no-index --find-links $(WHEELHOUSE) -r $(WHEELHOUSE)/requirements.txt; \
	PYTHONPATH=$(CURDIR) $(GPU_VENV)/bin/python tests/gpu_run.py

# Instructors: run the notebooks headless into a new build/run-NNN/ (summary, HTML pages, index.html).
# make course ONLY="02 05" PARAMS=params.yaml COURSE_ARGS="-p device auto"
course: install
	$(BIN)/python -m course_lib.course.run_course --out build $(if $(ONLY),--only $(ONLY),) $(if $(PARAMS),--params $(PARAMS),) $(COURSE_ARGS)

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
