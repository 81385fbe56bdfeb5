# modelperf — `make help` lists the targets.
SHELL := /bin/bash
CARGO ?= cargo

.PHONY: help run down test test-unit test-faults lint fmt schemas bench soak fuzz clean

help: ## list the targets
	@grep -hE '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-10s %s\n", $$1, $$2}'

run: ## install what is missing, start NATS + InfluxDB + services, run a demo workload, print a summary
	@deploy/local/run.sh

down: ## stop what `make run` started
	@deploy/local/infra.sh down

test: ## install what is missing, check formatting and lints, run every test against real servers
	@deploy/local/prereqs.sh
	@$(MAKE) --no-print-directory lint
	@$(MAKE) --no-print-directory test-unit

test-unit: ## run the test suite only (needs the prerequisites; tests rely on nextest's process per test)
	$(CARGO) nextest run --workspace --no-fail-fast

test-faults: ## the whole pipeline under load, one fault at a time, exact accounting after each (docs/faults.md)
	@deploy/local/faults.sh

lint: ## rustfmt --check and clippy -D warnings
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

fmt: ## format the code
	$(CARGO) fmt --all

schemas: ## regenerate schemas/ from the Rust types (review the diff)
	MODELPERF_BLESS=1 $(CARGO) test -p modelperf-schema --test contract

bench: ## the whole pipeline under load vs plain JetStream and an identity pipeline, then each service (docs/BENCHMARKS.md)
	@deploy/local/bench.sh

soak: ## the whole pipeline at 5 000 events/s for 30 minutes: exact accounting, memory growth per service
	@deploy/local/soak.sh

fuzz: ## fuzz the decode-and-validate entry points, FUZZ_SECONDS each (default 600; docs/fuzzing.md)
	@deploy/local/fuzz.sh

clean: ## remove build output and local data
	$(CARGO) clean
	rm -rf .local
