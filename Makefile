# lora-regret: the commands from the README.
.PHONY: env test test-fast test-slow lint demo down prepare-models

env:            ## create or refresh .venv (torch CPU pinned, everything else through uv)
	bash scripts/bootstrap-env.sh

test:           ## the whole test suite, from a fresh machine (installs what it needs)
	bash scripts/test.sh

test-fast:      ## unit and integration tests without the slow-marked ones
	bash scripts/test.sh -m "not slow"

test-slow:      ## only the slow-marked tests
	bash scripts/test.sh -m slow

lint:
	.venv/bin/ruff check .

prepare-models: env  ## build tiny-apertus and convert smollm2-135m into .cache/models
	.venv/bin/python -m training.models prepare tiny-apertus smollm2-135m

demo:           ## the sweep on this machine: MLflow + Airflow standalone + local jobs (see README)
	bash scripts/demo.sh

down:           ## stop what `make demo` started
	bash scripts/demo-down.sh
