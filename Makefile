# The three commands a newcomer needs: make install, make run, make test.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install run test test-python-path test-workers lint bench clean

install: $(STAMP)

# setup.py and the C source: the native relay fast path is compiled by the install.
$(STAMP): pyproject.toml setup.py src/iceward/net/_fastpath.c
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[test]'
	touch $(STAMP)

# turns: on 443 when this user may bind it (root, CAP_NET_BIND_SERVICE); serve says when not.
run: $(STAMP)
	$(BIN)/iceward serve $$($(BIN)/python -c 'from iceward.net.listeners import may_bind_port; \
		print("--tls-port 443" if may_bind_port(443) else "")') $(ARGS)

# The relay suite again on the pure-Python path (ICEWARD_FASTPATH=0); the first run uses the
# native fast path when it is built. A run limited by PYTEST_ARGS skips the extra passes. The
# two extra passes run side by side (each prints its output when it ends): their servers bind
# port 0 and share nothing.
RELAY_TESTS := tests/net tests/realclients \
	tests/api/test_api.py::test_metrics_move_while_traffic_flows \
	tests/api/test_api.py::test_admin_allocations_are_live_and_can_be_deleted

test: $(STAMP)
	$(BIN)/ruff check src tests bench
	$(BIN)/mypy
	$(BIN)/lint-imports
	$(BIN)/python -m pytest $(PYTEST_ARGS)
ifeq ($(strip $(PYTEST_ARGS)),)
	$(MAKE) --no-print-directory -j2 --output-sync=target test-python-path test-workers
endif

test-python-path: $(STAMP)
	ICEWARD_FASTPATH=0 $(BIN)/python -m pytest -q $(RELAY_TESTS) -k 'not asan'

# The real clients and the HTTP API again against servers of two worker processes.
test-workers: $(STAMP)
	ICEWARD_TEST_WORKERS=2 $(BIN)/python -m pytest -q tests/realclients tests/api

lint: $(STAMP)
	$(BIN)/ruff check src tests bench
	$(BIN)/mypy
	$(BIN)/lint-imports

bench: $(STAMP)
	$(BIN)/python bench/codec_bench.py

clean:
	rm -rf $(VENV) build src/*.egg-info .pytest_cache .mypy_cache .ruff_cache
	rm -f src/iceward/net/_fastpath*.so
