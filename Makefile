# tm: build, run and test. `make run` and `make test` need nothing but python3 (and npm for buf).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
BIN := $(VENV)/bin
BUF_VERSION := 1.75.0
BUF := .tools/buf/node_modules/.bin/buf
PROTOS := $(wildcard protos/tm/v1/*.proto)
GEN_DIR := tm_client/pb

.PHONY: run demo demo-cluster bench screenshots test test-fast proto proto-check lint typecheck buf-lint pytest venv clean examples-deps

venv: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $@

$(BUF):
	npm install --silent --no-audit --no-fund --prefix .tools/buf @bufbuild/buf@$(BUF_VERSION)

run: venv
	$(BIN)/tm-server $(ARGS)

# A realistic producer against a running server (`make run` in another shell).
demo: venv
	$(PY) -m tm_client.demo $(ARGS)

# Three local nodes on one SQLite store and a rolling upgrade over them (ARGS="--keep" keeps them up).
demo-cluster: venv
	$(PY) -m tm_client.demo_cluster $(ARGS)

# Benchmarks against a do-nothing baseline (a few minutes); results in bench/results/.
bench: venv
	$(PY) -m bench.run $(ARGS)

# The README's dashboard screenshots (docs/screenshots/*.png), taken by the browser tests.
screenshots: venv
	TM_SCREENSHOTS=docs/screenshots $(BIN)/pytest -q -p no:cacheprovider tests/browser

NODE_EXAMPLE := examples/node-producer

examples-deps: $(NODE_EXAMPLE)/node_modules/.installed

$(NODE_EXAMPLE)/node_modules/.installed: $(NODE_EXAMPLE)/package-lock.json
	npm ci --silent --no-audit --no-fund --prefix $(NODE_EXAMPLE)
	touch $@

# Generates the stubs into a scratch folder, then flattens tm/v1 into one
# package with relative imports, so the stubs import as tm_client.pb.*.
define gen_protos
	rm -rf $(1) && mkdir -p $(1)/out
	PATH="$(abspath $(BIN)):$$PATH" $(PY) -m grpc_tools.protoc -Iprotos \
		--python_out=$(1)/out --grpc_python_out=$(1)/out \
		--mypy_out=$(1)/out --mypy_grpc_out=$(1)/out $(PROTOS)
	cp tm_client/pb/__init__.py $(1)/ 2>/dev/null || true
	for f in $(1)/out/tm/v1/*; do \
		sed -E -e 's/^from tm\.v1 import /from . import /' \
		       -e 's/^import tm\.v1\.([a-z_0-9]+)$$/from . import \1/' \
		       -e 's/\btm\.v1\.([a-z_0-9]+_pb2)\./\1./g' "$$f" > $(1)/$$(basename $$f); \
	done
	rm -rf $(1)/out
endef

proto: venv
	$(call gen_protos,.gen-tmp)
	find $(GEN_DIR) -name '*_pb2*' -delete
	cp .gen-tmp/*_pb2* $(GEN_DIR)/
	rm -rf .gen-tmp

proto-check: venv
	$(call gen_protos,.gen-check)
	@for f in .gen-check/*_pb2*; do \
		cmp -s "$$f" "$(GEN_DIR)/$$(basename $$f)" || { echo "stale generated code: $(GEN_DIR)/$$(basename $$f); run 'make proto'"; rm -rf .gen-check; exit 1; }; \
	done
	@extra=$$(cd $(GEN_DIR) && ls *_pb2* | while read f; do [ -e ../../.gen-check/$$f ] || echo $$f; done); \
	rm -rf .gen-check; \
	if [ -n "$$extra" ]; then echo "generated files without a proto: $$extra"; exit 1; fi
	@echo "generated code is up to date"

buf-lint: $(BUF)
	cd protos && ../$(BUF) lint

lint: venv
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: venv
	$(BIN)/mypy

pytest: venv examples-deps
	$(BIN)/pytest -q

# The tests without the slow ones (benchmark smoke run, Node example, big
# trees), for a quick loop while developing; CI runs `make test`, all of them.
test-fast: venv examples-deps
	$(BIN)/pytest -q -m "not slow"

test: proto-check lint typecheck buf-lint pytest

clean:
	rm -rf $(VENV) .tools .gen-tmp .gen-check .mypy_cache .ruff_cache .pytest_cache
