# The two commands of the README's quick start, plus the checks CI runs.
.PHONY: dev dev-reset test lint check-protos ci

## Bring the whole mesh up locally (PostgreSQL + Redis started or installed when absent). Ctrl-C stops it.
dev:
	scripts/dev.sh

## Start over: drop the dev databases and .dev/ (secrets, logs, mail), then bring the mesh up.
dev-reset:
	scripts/dev.sh --reset

## Run the full test suite against real PostgreSQL and Redis.
test:
	scripts/test.sh

## Formatting, clippy with warnings as errors, buf lint and buf format.
lint:
	cargo fmt --all -- --check
	cargo clippy --workspace --all-targets -- -D warnings
	scripts/check-protos.sh

## Everything CI runs.
ci:
	bash .ci/run
