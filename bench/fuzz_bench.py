"""Coverage-guided fuzzing of the parsers (issue 20, item 3, the long run): atheris.

The targets are tests/security/fuzz_targets.py's harnesses (CI runs the same functions
under Hypothesis, tests/security/test_fuzz.py): ``dhcp`` (the codec's decode, then the
policy's answer on ports 67 and 4011 and in proxy mode, encoded and decoded back),
``tftp`` (the guard over tftpy's request parser, then ``confine()``) and ``dns`` (the
zone's ``answer``). Each refuses in its own way (DhcpDecodeError, DhcpReplyTooLarge,
TftpException, TftpPathError, None) and checks what must hold of what it accepted (see
fuzz_targets.py); anything else it raises is a crash, and libFuzzer stops there.

Each target runs in a process of its own (this file, ``--target NAME``): atheris
instruments the project's modules and the parsers under them (``provisioner``, ``tftpy``,
``dns``) as they are imported, so coverage guides the mutations, and libFuzzer runs
``--runs`` inputs from a seed corpus the project's builders make (the lab's PXE packets
and TFTP requests, dnspython's queries), written under the work folder. One line a target:
inputs run, exec/s, coverage (libFuzzer's ``cov``: edges reached, ``ft``: features,
after the seeds alone and at the end; the corpus it grew), crashes. Exit 1 when a target
crashed: the work folder is kept and the crashing input's path printed, with the command
that runs that input again. Otherwise the work folder is removed, unless it was named
(``--workdir``: kept, and a second run there goes on from the corpora the first grew).

    .venv/bin/python bench/fuzz_bench.py [--runs 1000000] [--targets dhcp,tftp,dns]
        [--max-len 65507] [--timeout 10] [--seed 1] [--workdir DIR] [--json]
        [--libfuzzer-flag=-use_value_profile=1 ...]

atheris is in the ``dev`` extra (scripts/setup installs it) on x86_64 Linux, where it is
a manylinux wheel with libFuzzer inside (3.0.0 is the last with one for CPython 3.11).
Elsewhere ``pip install atheris`` builds it from source and needs clang with libFuzzer;
the bench says so if it is missing. On demand only, never in CI: 10^6 inputs take 1-10
minutes a target on one core.
"""

from __future__ import annotations

import argparse
import json
import logging
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

TARGETS = ("dhcp", "tftp", "dns")
INSTRUMENTED = ["provisioner", "tftpy", "dns"]
MAX_DATAGRAM = 65507  # the largest UDP payload: what serve's sockets read (fragments allowed)
# libFuzzer's status lines ("#4096 pulse  cov: 310 ft: 1021 corp: 160/9442b ...") and stats.
_STATUS = re.compile(r"^#(\d+)\s+(\w+)\s+cov: (\d+) ft: (\d+) corp: (\d+)/", re.MULTILINE)
_STAT = re.compile(r"^stat::(\w+):\s+(\d+)", re.MULTILINE)
_ARTIFACT = re.compile(r"Test unit written to (\S+)")
_PY_ERROR = re.compile(r"=== Uncaught Python exception: ===\n(.*?)\n", re.DOTALL)


@dataclass
class TargetResult:
    target: str
    inputs: int
    seconds: float
    exec_per_sec: int  # libFuzzer's average (start-up left out)
    seed_cov: int  # after the seed corpus alone (INITED)
    seed_ft: int
    cov: int  # at the end
    ft: int
    corpus: int  # units in the corpus at the end (seeds and what libFuzzer kept)
    new_units: int
    peak_rss_mb: int
    crashes: int
    crash_input: str | None
    error: str | None  # the exception, or why the run failed without one
    log: str


def seeds(target: str) -> list[bytes]:
    from tests.security import fuzz_targets

    return {
        "dhcp": fuzz_targets.dhcp_seeds,
        "tftp": fuzz_targets.tftp_seeds,
        "dns": fuzz_targets.dns_seeds,
    }[target]()


def harness(target: str, work: Path) -> Callable[[bytes], None]:
    from tests.security import fuzz_targets

    if target == "tftp":
        return fuzz_targets.tftp_harness(fuzz_targets.make_tftp_root(work))
    return fuzz_targets.dhcp_one if target == "dhcp" else fuzz_targets.dns_one


def fuzz_one_target(target: str, work: Path, libfuzzer_args: list[str]) -> None:
    """The child: instrument, then hand the harness to libFuzzer (which exits the process)."""
    try:
        import atheris
    except ImportError:
        sys.exit("atheris is missing: .venv/bin/pip install atheris (see this file's docstring)")
    with atheris.instrument_imports(include=INSTRUMENTED):
        import tests.security.fuzz_targets  # noqa: F401 (the parsers, instrumented)
    logging.getLogger("tftpy").setLevel(logging.CRITICAL)  # a log line per ERROR packet
    atheris.Setup([sys.argv[0], *libfuzzer_args], harness(target, work))
    atheris.Fuzz()


def run_target(target: str, work: Path, args: argparse.Namespace) -> TargetResult:
    here = work / target
    corpus, crashes = here / "corpus", here / "crashes"
    corpus.mkdir(parents=True, exist_ok=True)  # a corpus already there is run on from
    crashes.mkdir(exist_ok=True)
    for n, seed in enumerate(seeds(target)):
        (corpus / f"seed-{n:03d}").write_bytes(seed)
    log = here / "libfuzzer.log"
    command = [
        sys.executable, __file__, "--target", target, "--workdir", str(here), "--",
        f"-runs={args.runs}", f"-max_len={args.max_len}", f"-timeout={args.timeout}",
        f"-seed={args.seed}", "-print_final_stats=1", f"-artifact_prefix={crashes}/",
        *args.extra,
        str(corpus),
    ]  # fmt: skip
    started = time.monotonic()
    with log.open("wb") as out:
        rc = subprocess.run(command, stdout=out, stderr=subprocess.STDOUT, cwd=ROOT).returncode
    return parse_log(target, log.read_text(errors="replace"), rc, time.monotonic() - started, log)


def parse_log(target: str, text: str, rc: int, seconds: float, log: Path) -> TargetResult:
    """libFuzzer's output: the first (INITED) and last status lines, final stats, artifact."""
    status = _STATUS.findall(text)
    stats = {name: int(value) for name, value in _STAT.findall(text)}
    inited = next((s for s in status if s[1] == "INITED"), status[0] if status else None)
    last = status[-1] if status else None
    artifact = _ARTIFACT.search(text)
    error = _PY_ERROR.search(text)
    why = error.group(1).strip() if error else None
    if rc and why is None:
        why = f"exit status {rc}; see {log}"
    inputs = stats.get("number_of_executed_units", 0)
    return TargetResult(
        target=target,
        inputs=inputs,
        seconds=round(seconds, 1),
        # libFuzzer's whole seconds say 0 for a run under one: then ours, start-up included
        exec_per_sec=stats.get("average_exec_per_sec", 0) or round(inputs / seconds),
        seed_cov=int(inited[2]) if inited else 0,
        seed_ft=int(inited[3]) if inited else 0,
        cov=int(last[2]) if last else 0,
        ft=int(last[3]) if last else 0,
        corpus=int(last[4]) if last else 0,
        new_units=stats.get("new_units_added", 0),
        peak_rss_mb=stats.get("peak_rss_mb", 0),
        crashes=1 if artifact else 0,
        crash_input=artifact.group(1) if artifact else None,
        error=why,
        log=str(log),
    )


def line(r: TargetResult) -> str:
    text = (
        f"{r.target}: {r.inputs:,} inputs in {r.seconds:,.0f} s, {r.exec_per_sec:,} exec/s; "
        f"coverage cov {r.cov:,} ft {r.ft:,} (seeds alone: cov {r.seed_cov:,} "
        f"ft {r.seed_ft:,}), corpus {r.corpus:,} units; crashes {r.crashes}"
    )
    if r.crash_input:
        text += (
            f"\n  crash: {r.error}\n  input: {r.crash_input}\n  again: {sys.executable} "
            f"{__file__} --target {r.target} --workdir {Path(r.log).parent} -- {r.crash_input}"
        )
    elif r.error:
        text += f"\n  failed: {r.error}"
    return text


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=1_000_000, help="inputs per target")
    parser.add_argument("--targets", default=",".join(TARGETS))
    parser.add_argument("--max-len", type=int, default=MAX_DATAGRAM)
    parser.add_argument("--timeout", type=int, default=10, help="seconds one input may take")
    parser.add_argument("--seed", type=int, default=1, help="libFuzzer's random seed")
    parser.add_argument(
        "--workdir", type=Path, help="kept, its corpora grown on; default: a temporary folder"
    )
    parser.add_argument("--json", action="store_true")
    parser.add_argument(
        "--libfuzzer-flag",
        dest="extra",
        action="append",
        default=[],
        help="one more libFuzzer flag, e.g. -use_value_profile=1; repeatable",
    )
    parser.add_argument("--target", choices=TARGETS, help=argparse.SUPPRESS)  # the child
    parser.add_argument("libfuzzer", nargs="*", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.target:
        fuzz_one_target(args.target, args.workdir, args.libfuzzer)
        return 0
    targets = [t for t in args.targets.split(",") if t]
    if unknown := set(targets) - set(TARGETS):
        parser.error(f"unknown targets {sorted(unknown)}; known: {', '.join(TARGETS)}")
    work = args.workdir or Path(tempfile.mkdtemp(prefix="fuzz-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    results = []
    for target in targets:
        results.append(run_target(target, work, args))
        if not args.json:
            print(line(results[-1]), flush=True)
    failed = any(r.error for r in results)
    if args.json:
        print(json.dumps([asdict(r) for r in results], indent=2))
    if failed:
        print(f"fuzz_bench: kept {work}", file=sys.stderr)
    elif args.workdir is None:
        shutil.rmtree(work)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
