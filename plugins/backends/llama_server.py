"""Run llama-cpp-python's OpenAI-compatible server with xpkit's model-loading rules.

``python -m xpkit.plugins.backends.llama_server --model default --host 127.0.0.1 --port 8000``
is ``python -m llama_cpp.server`` (same arguments; needs its ``server`` extra: fastapi,
uvicorn, sse-starlette, starlette-context, pydantic-settings) with two additions: ``--model``
also accepts ``default`` and bundled model names, and llama.cpp's extra CPU buffers follow
the ``cpu_extra_buffers`` setting and OpenMP threads wait passively (see
``xpkit.plugins.backends.llama_cpp``), so the server neither crashes nor stalls where the
in-process backend would not. Point xpkit at it with
``--model http://127.0.0.1:8000/v1``.
"""

from __future__ import annotations

import os
import runpy
import sys


def main(argv: list[str] | None = None) -> None:
    from xpkit.core.config import load_settings
    from xpkit.core.llm import BUNDLED, resolve_model
    from xpkit.plugins.backends.llama_cpp import load_params, use_extra_buffers

    # Same thread-waiting rule as the in-process backend (see llama_cpp.load_llama).
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    args = list(sys.argv[1:] if argv is None else argv)
    for i, arg in enumerate(args[:-1]):
        if arg == "--model" and (args[i + 1] == "default" or args[i + 1] in BUNDLED):
            args[i + 1] = resolve_model(args[i + 1]).location
    sys.argv = ["llama_cpp.server", *args]
    settings = load_settings()
    # The server loads its model inside main(): keep the load-parameter rule for its lifetime.
    with load_params(use_extra_buffers(settings.cpu_extra_buffers)):
        runpy.run_module("llama_cpp.server", run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main()
