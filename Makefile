# Two commands do everything on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp

.PHONY: venv demo test test-paths lint bench clean wheel-check browser

$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check -c constraints.txt -e '.[gates,ray,dev]'
	touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	$(PY) examples/demo.py demo-out

test: $(STAMP) browser
	$(VENV)/bin/pytest -q

# The report's browser test renders `registry report` in Debian's headless chromium. Where
# it is missing and this user can install Debian packages (root with apt-get), install it
# (about 2 minutes); elsewhere the test is skipped with its reason.
browser:
	@if [ -x /usr/bin/chromium ]; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  echo "installing Debian's chromium for the report's browser test"; \
	  DEBIAN_FRONTEND=noninteractive timeout 900 apt-get install -y -q chromium >/dev/null 2>&1 || \
	  { timeout 300 apt-get update -q >/dev/null 2>&1; \
	    DEBIAN_FRONTEND=noninteractive timeout 900 apt-get install -y -q chromium >/dev/null 2>&1; } || \
	  echo "could not install chromium: the report's browser test will be skipped"; \
	else echo "no /usr/bin/chromium (install Debian's chromium): the report's browser test will be skipped"; fi

# The tests whose verdicts rest on trained models, and the demo, again under every other
# CPU kernel path this machine offers (PyTorch's AVX-512 / AVX2 / scalar kernels round
# differently, like a new seed): a margin that holds on one CPU only fails here.
MODEL_TESTS := tests/gates/test_model_gates.py tests/gates/test_eval_statistics.py tests/gates/test_sweep.py \
  tests/test_demo.py
test-paths: $(STAMP)
	@best=$$($(PY) -c "import torch; print(torch.backends.cpu.get_cpu_capability().lower())"); \
	for path in default avx2 avx512; do \
	  flag=$$path; [ $$path = avx512 ] && flag=avx512f; \
	  [ $$path = $$best ] && continue; \
	  [ $$path = default ] || grep -qw $$flag /proc/cpuinfo || continue; \
	  echo "== ATEN_CPU_CAPABILITY=$$path (the suite ran on $$best)"; \
	  ATEN_CPU_CAPABILITY=$$path $(VENV)/bin/pytest -q -p no:cacheprovider $(MODEL_TESTS) || exit 1; \
	done

# Every benchmark in bench/ in a quick mode (70 s on the 2-core box), each printing its
# ratio against the baseline it measures in the same run; the figures and full commands
# are in bench/README.md (the S3 push/pull ratios at 64 MiB carry more fixed cost than
# its 1 GiB goals: `bench_remote_s3.py --size-mib 1024`, about 5 minutes). A missed goal
# or a crash is reported at the end (exit 1) without stopping the others. Left out:
# bench/demo_margins.py (retrains the demo per CPU kernel path and seed, many minutes:
# `$(PY) bench/demo_margins.py -j 2`) and bench_rollback.py's MLflow comparison (needs
# MLflow in its own venv: `--mlflow PYTHON`).
BENCHES := "bench_safetensors_header.py --quick" "bench_dataset_audit.py --quick" \
	"bench_cli.py --repeat 5" "bench_ingest.py --size-mib 256 --repeat 1" \
	"bench_rollback.py --repeat 3" "bench_tui.py --repeat 3" \
	"bench_remote_s3.py --size-mib 64" "bench_gate_overhead.py --repeat 9" \
	"bench_eval_throughput.py --prompts 32 --repeat 3" "bench_tensors.py --quick"
bench: $(STAMP)
	@failed=; for b in $(BENCHES); do \
	  echo "== $(PY) bench/$$b"; \
	  $(PY) bench/$$b || failed="$$failed $${b%% *}"; \
	done; \
	[ -z "$$failed" ] || { echo "make bench: goal missed or failed:$$failed"; exit 1; }

# Habits CI checks: lint rules, the format, the layers contract (docs/design.md) and the
# types ([tool.mypy] in pyproject.toml: registry, gates, tui, cli).
lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/lint-imports
	$(VENV)/bin/mypy

# The wheel as users get it: built from the tree, installed without [gates] (no torch) in
# a fresh virtualenv outside the checkout, then the whole release flow with its
# `registry` command (init, add, gates, promote, rollback, audit verify).
wheel-check: $(STAMP)
	PYTHON=$(PYTHON) .ci/wheel-check

clean:
	rm -rf $(VENV) demo-out
