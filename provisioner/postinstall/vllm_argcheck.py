"""Check vLLM server argument lists with vLLM's own parser (run by a vLLM venv's python).

Standalone on purpose: it imports vLLM, not provisioner, and runs in the control node's
vLLM venv (``provisioner.artifacts.control_venv.control_venv``)::

    <venv>/bin/python -I vllm_argcheck.py < argvs.json  # [["--model", "/m", ...], ...]

(``-I``: the script's folder must not come first on sys.path, its vllm.py would shadow
vLLM.)

For each argument list it prints one JSON object per line: what vLLM made of it (the
engine arguments that matter to a plan) or ``{"error": "..."}`` with vLLM's own message.
:func:`provisioner.clusters.engines.vllm_site.check_arguments` runs it.
"""

from __future__ import annotations

import contextlib
import io
import json
import sys
from typing import Any

FIELDS = (
    "model", "served_model_name", "dtype", "quantization", "gpu_memory_utilization",
    "max_model_len", "tensor_parallel_size", "pipeline_parallel_size",
    "distributed_executor_backend", "enforce_eager",
)  # fmt: skip


def _parser() -> Any:
    from vllm.utils.argparse_utils import FlexibleArgumentParser

    try:
        from vllm.entrypoints.launchers.cli_args import make_arg_parser
    except ImportError:  # older vLLM
        from vllm.entrypoints.openai.cli_args import make_arg_parser
    return make_arg_parser(FlexibleArgumentParser(prog="vllm-server"))


def _validate(args: Any) -> None:
    try:
        from vllm.entrypoints.launchers.cli_args import validate_parsed_serve_args
    except ImportError:
        from vllm.entrypoints.openai.cli_args import (
            validate_parsed_serve_args,
        )
    validate_parsed_serve_args(args)


def check(argv: list[str]) -> dict[str, Any]:
    from vllm.engine.arg_utils import AsyncEngineArgs

    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err):
            args = _parser().parse_args(argv)
        _validate(args)
        engine = AsyncEngineArgs.from_cli_args(args)
    except SystemExit:
        lines = [line for line in err.getvalue().splitlines() if line.strip()]
        return {"error": lines[-1] if lines else "the parser refused the arguments"}
    except Exception as exc:  # vLLM's own validation: its message is the answer
        return {"error": f"{type(exc).__name__}: {exc}"}
    out = {f: getattr(engine, f, None) for f in FIELDS}
    out["host"], out["port"] = args.host, args.port
    return {k: (v if isinstance(v, int | float | str | bool | None | list) else str(v))
            for k, v in out.items()}  # fmt: skip


def main() -> int:
    import vllm

    argvs = json.load(sys.stdin)
    print(json.dumps({"vllm": getattr(vllm, "__version__", "?")}))
    for argv in argvs:
        print(json.dumps(check(list(argv))), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
