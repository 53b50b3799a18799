# Two commands do everything on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp

.PHONY: venv demo test test-paths lint bench clean

$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check -c constraints.txt -e '.[gates,dev]'
	touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	$(PY) examples/demo.py demo-out

test: $(STAMP)
	$(VENV)/bin/pytest -q

# The tests whose verdicts rest on trained models, and the demo, again under every other
# CPU kernel path this machine offers (PyTorch's AVX-512 / AVX2 / scalar kernels round
# differently, like a new seed): a margin that holds on one CPU only fails here.
MODEL_TESTS := tests/gates/test_model_gates.py tests/gates/test_eval_statistics.py tests/test_demo.py
test-paths: $(STAMP)
	@best=$$($(PY) -c "import torch; print(torch.backends.cpu.get_cpu_capability().lower())"); \
	for path in default avx2 avx512; do \
	  flag=$$path; [ $$path = avx512 ] && flag=avx512f; \
	  [ $$path = $$best ] && continue; \
	  [ $$path = default ] || grep -qw $$flag /proc/cpuinfo || continue; \
	  echo "== ATEN_CPU_CAPABILITY=$$path (the suite ran on $$best)"; \
	  ATEN_CPU_CAPABILITY=$$path $(VENV)/bin/pytest -q -p no:cacheprovider $(MODEL_TESTS) || exit 1; \
	done

# Habits CI checks: lint rules, the format, and the layers contract (docs/design.md).
lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/lint-imports

clean:
	rm -rf $(VENV) demo-out
