# Two commands: `make run` (set up, then start the bot) and `make test`.
.PHONY: setup run say test lint bench

setup:
	bash scripts/setup.sh

run: setup
	.venv/bin/python bot.py

say: setup
	.venv/bin/pipecat-vibevoice say "Hello! This is the bundled voice, speaking on a bare machine with no GPU." -o hello.wav

test:
	bash scripts/test.sh

lint: setup
	.venv/bin/ruff check .

bench: setup
	.venv/bin/python bench/engine_latency.py
