# Aliases for the scripts (the README's quick start calls the scripts, which need nothing but bash).
.PHONY: demo test lint bench clean
demo:
	bash scripts/demo.sh
test:
	bash scripts/test.sh
bench:
	bash scripts/install.sh .venv && .venv/bin/python bench/bench_cli.py && .venv/bin/python bench/bench_local.py
clean:
	rm -rf .venv .demo-home .pytest_cache .mypy_cache .ruff_cache
