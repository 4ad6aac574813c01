"""Convert a GGUF model file into a Hugging Face model folder that vLLM loads.

Run by the control venv's python (``provisioner.artifacts.control_venv.control_venv``:
vLLM's torch and transformers, plus ``gguf`` and ``accelerate``), never the appliance's::

    <control venv>/bin/python scripts/gguf_to_hf.py MODEL.gguf OUT_DIR [--dtype bfloat16]

Writes ``config.json``, ``generation_config.json``, ``model.safetensors`` and the tokenizer
files into OUT_DIR (made if absent; refused if it holds anything). The weights are
dequantized into ``--dtype`` (bfloat16 halves float32's size). Nothing is fetched from the
Hugging Face hub: the GGUF carries the config and the tokenizer. Exit status 2: bad usage.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

DTYPES = ("bfloat16", "float16", "float32")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("gguf", type=Path, metavar="GGUF_FILE")
    parser.add_argument("out", type=Path, metavar="OUT_DIR")
    parser.add_argument("--dtype", choices=DTYPES, default="bfloat16")
    args = parser.parse_args(argv)
    if not args.gguf.is_file():
        parser.error(f"{args.gguf}: no such file")
    if args.out.exists() and (not args.out.is_dir() or any(args.out.iterdir())):
        parser.error(f"{args.out}: exists and is not empty; refusing to write into it")
    return args


def convert(gguf: Path, out: Path, dtype_name: str) -> None:
    import torch  # type: ignore[import-not-found]
    from transformers import (  # type: ignore[import-not-found]
        AutoModelForCausalLM,
        AutoTokenizer,
        GgufConfig,
    )

    folder, name = str(gguf.resolve().parent), gguf.name
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    model = AutoModelForCausalLM.from_pretrained(
        folder,
        gguf_file=name,
        quantization_config=GgufConfig(dequantize=True),  # the kwarg alone is refused (5.19)
        dtype=getattr(torch, dtype_name),
    )
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    for p in out.iterdir():  # save_pretrained writes the weights 0600: served files are 0644
        if p.is_file():
            p.chmod(0o644)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    started = time.monotonic()
    convert(args.gguf, args.out, args.dtype)
    size = sum(p.stat().st_size for p in args.out.iterdir() if p.is_file())
    took = time.monotonic() - started
    print(f"{args.out}: {size / 1e6:.0f} MB ({args.dtype}) in {took:.0f}s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
