# pod-migration: live migration of running Kubernetes pods with CRIU.
# Run as root on Debian bookworm: `make demo` (the main job) and `make test`.

SHELL := /usr/bin/env bash
CONFIGURATION ?= Debug
SOLUTION := Migrate.Operator.sln
export DOTNET_CLI_TELEMETRY_OPTOUT := 1
export DOTNET_NOLOGO := 1
# The .NET SDK leaves a few empty directories in $TMPDIR on every build and test run: keep them in
# the build output (make clean removes it) instead of /tmp.
export TMPDIR := $(CURDIR)/artifacts/tmp
$(shell mkdir -p "$(TMPDIR)")

.DEFAULT_GOAL := help

.PHONY: help
help: ## Show this help.
	@awk 'BEGIN {FS = ":.*##"; printf "Targets:\n"} /^[a-zA-Z_-]+:.*##/ { printf "  %-10s %s\n", $$1, $$2 }' $(MAKEFILE_LIST)

.PHONY: prereqs
prereqs: ## Install runc, containerd (1.6; 1.7 and 2.1 privately), CNI plugins, CRIU 4.2, buildah and podman, Prometheus (idempotent, root).
	hack/install-prereqs.sh

.PHONY: build
build: ## Build every project (warnings are errors) and the native podmig-runc.
	dotnet build $(SOLUTION) -c $(CONFIGURATION) -nologo -clp:ErrorsOnly
	hack/build-native.sh

.PHONY: test
test: prereqs build ## Install prerequisites, build, run all tests; ends with "N passed, N failed".
	CONFIGURATION=$(CONFIGURATION) hack/run-tests.sh

.PHONY: demo
demo: prereqs build ## A live migration in the local sandbox cluster, with a readable summary.
	CONFIGURATION=$(CONFIGURATION) hack/demo.sh

.PHONY: bench
bench: prereqs ## Benchmarks (docs/benchmarks*.md): migration vs the manual runc pipeline and podman, transfer, runtime, emulator, controller, scale, groups, checkpoints, connections.
	hack/bench.sh

PREFIX ?= /usr/local

.PHONY: kubectl-migrate
kubectl-migrate: ## Publish the kubectl plugin as one executable and install it as $(PREFIX)/bin/kubectl-migrate.
	dotnet publish operator/Migrate.Kubectl/Migrate.Kubectl.csproj -c Release -r linux-x64 --self-contained \
	  -p:PublishSingleFile=true -p:EnableCompressionInSingleFile=true -p:DebugType=none -o artifacts/kubectl-migrate -nologo -clp:ErrorsOnly
	install -D -m 0755 artifacts/kubectl-migrate/kubectl-migrate $(PREFIX)/bin/kubectl-migrate
	@echo "installed $(PREFIX)/bin/kubectl-migrate: try 'kubectl migrate --help'"

.PHONY: images
images: prereqs ## Build the operator and node-agent images here as OCI archives in artifacts/images (debootstrap + buildah).
	hack/images.sh

.PHONY: clean
clean: ## Remove build output and test results.
	rm -rf artifacts
