#!/usr/bin/env python3
"""Run a fuzzing campaign on one target (or all): coverage-guided with atheris/libFuzzer.

    fuzz/run.py TARGET [--seconds N] [--corpus DIR] [--strict] [-- LIBFUZZER OPTIONS]
    fuzz/run.py all --seconds N          every target in turn, N seconds each
    fuzz/run.py TARGET --repro FILE...   run saved inputs once, without the fuzzer
    fuzz/run.py --list

Targets are in fuzz/targets.py. The campaign runs in a child process (libFuzzer exits
the process it runs in), seeded from a freshly generated corpus (genuine packets,
test vectors, the documented example configs) plus --corpus DIR, where new inputs are
kept for the next run. libFuzzer options (-max_total_time=, -runs=, -max_len=, -jobs=,
-dict=, ...) are passed through; options this script does not know are passed too.
At the end it prints one line

    FUZZ-RESULT target=T engine=atheris inputs=N seconds=S crashes=C known=ID:n,... artifacts=...

and exits 0 when no crash was found, 1 when one was (the reproducer path is printed;
re-run it with --repro). Without atheris (or with --engine hypothesis) it falls back to
hypothesis driving the same targets from mutated seeds: no coverage guidance there.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
TARGET_NAMES = ["open_server", "open_client", "siv_diff", "window_diff", "config", "key_file",
                "packets", "replay_state"]
MAX_LEN = {"open_server": 4096, "open_client": 4096, "siv_diff": 4096, "window_diff": 2048,
           "config": 8192, "key_file": 8192, "packets": 2048, "replay_state": 2048}
# Python modules whose branches guide the fuzzer (imported under atheris' import hook).
# The harness itself is not instrumented (its import would cost seconds); the config
# targets add the standard-library parsers whose behaviour the validation builds on.
INSTRUMENT = ["vpncrypt"]
INSTRUMENT_TEXT = ["vpncrypt", "configparser", "ipaddress", "base64"]


# =========================================================================== worker side


def _import_targets(instrument: bool, name: str = ""):
    sys.path.insert(0, str(ROOT))
    if instrument:
        import atheris

        include = INSTRUMENT_TEXT if name in ("config", "key_file") else INSTRUMENT
        for mod in include:  # imported already (ipaddress is): re-import it instrumented
            if mod in sys.modules and mod != "vpncrypt":
                sys.modules.pop(mod)
        with atheris.instrument_imports(include=include):
            from fuzz import targets
    else:
        from fuzz import targets
    targets.install_speedups()
    targets.apply_sabotage(os.environ.get("VPNCRYPT_FUZZ_SABOTAGE"))
    return targets


def worker_atheris(name: str, argv: list[str]) -> None:
    import atheris

    targets = _import_targets(instrument=True, name=name)
    fn = targets.TARGETS[name]
    atheris.Setup([sys.argv[0], *argv], fn)
    atheris.Fuzz()


def _hypothesis_strategy(seeds, max_len):
    from hypothesis import strategies as st

    def mutate(args):
        seed, edits, cut, extra = args
        b = bytearray(seed)
        for pos, val in edits:
            if b:
                b[pos % len(b)] = val
        if cut is not None:
            b = b[: cut % (len(b) + 1)]
        return bytes(b + extra)[:max_len]

    mutated = st.tuples(st.sampled_from(seeds),
                        st.lists(st.tuples(st.integers(0, 2**16), st.integers(0, 255)),
                                 max_size=6),
                        st.none() | st.integers(0, 2**16),
                        st.binary(max_size=32)).map(mutate)
    return st.one_of(st.sampled_from(seeds), mutated, st.binary(max_size=max_len))


def worker_hypothesis(name: str, seconds: float, runs: int | None, artifacts: Path) -> None:
    """Fallback engine: hypothesis generates inputs (no coverage guidance)."""
    from hypothesis import HealthCheck, given, settings

    targets = _import_targets(instrument=False)
    fn = targets.TARGETS[name]
    seeds = targets.seeds(name) or [b""]
    crash = {}

    @settings(max_examples=200, deadline=None, database=None, derandomize=False,
              suppress_health_check=list(HealthCheck))
    @given(_hypothesis_strategy(seeds, MAX_LEN[name]))
    def run_one(data):
        try:
            fn(data)
        except BaseException:
            crash["data"] = data  # hypothesis shrinks: the last failing input is the smallest
            raise

    end = time.monotonic() + seconds
    try:
        for data in seeds:  # every seed once, like libFuzzer's INITED pass
            crash["data"] = data
            fn(data)
        crash.clear()
        while time.monotonic() < end and (runs is None or targets.STATS[name] < runs):
            run_one()
    except BaseException:
        traceback.print_exc()
        data = crash.get("data", b"")
        path = artifacts / f"crash-{hashlib.sha1(data).hexdigest()}"
        path.write_bytes(data)
        print(f"Test unit written to {path}", file=sys.stderr)
        print(f"Done {targets.STATS[name]} runs (hypothesis)", file=sys.stderr, flush=True)
        sys.exit(1)
    print(f"Done {targets.STATS[name]} runs (hypothesis)", file=sys.stderr, flush=True)


def repro(name: str, files: list[str]) -> int:
    targets = _import_targets(instrument=False)
    fn = targets.TARGETS[name]
    failed = 0
    for f in files:
        try:
            fn(Path(f).read_bytes())
            print(f"{f}: ok")
        except BaseException:
            failed += 1
            print(f"{f}: FAILED")
            traceback.print_exc()
    if targets.KNOWN_HITS:
        print("known issues hit:", dict(targets.KNOWN_HITS))
    return 1 if failed else 0


# =========================================================================== parent side


def _dict_escape(token: str) -> str:
    out = []
    for b in token.encode("utf-8", "surrogatepass"):
        c = chr(b)
        out.append(c if 32 <= b < 127 and c not in '"\\' else f"\\x{b:02x}")
    return '"' + "".join(out) + '"'


def write_inputs(name: str, workdir: Path) -> tuple[Path, Path | None]:
    """The generated seed corpus (and a libFuzzer dictionary for text targets)."""
    sys.path.insert(0, str(ROOT))
    from fuzz import targets

    seeds_dir = workdir / "seeds"
    seeds_dir.mkdir()
    for data in targets.seeds(name):
        (seeds_dir / hashlib.sha1(data).hexdigest()).write_bytes(data)
    if name not in ("config", "key_file"):
        return seeds_dir, None
    tokens = set(targets._KEYS) | {f"[{s}]" for s in targets._SECTIONS}
    tokens |= set(targets.INLINE_KEYS) | set(targets.FILE_KEYS) | set(targets._SEPS)
    tokens |= {v for vs in targets._GOOD.values() for v in vs}
    tokens |= {a for a in targets._ATOMS if a}
    dict_path = workdir / f"{name}.dict"
    dict_path.write_text("\n".join(_dict_escape(t) for t in sorted(tokens)) + "\n")
    return seeds_dir, dict_path


def run_target(name: str, args, passthrough: list[str]) -> dict:
    workdir = Path(tempfile.mkdtemp(prefix=f"vpncrypt-fuzz-{name}-"))
    corpus = Path(args.corpus) / name if args.corpus and args.target == "all" else (
        Path(args.corpus) if args.corpus else workdir / "corpus")
    corpus.mkdir(parents=True, exist_ok=True)
    artifacts = Path(args.artifacts or (ROOT / "fuzz" / "crashes")).resolve()
    artifacts.mkdir(parents=True, exist_ok=True)
    seeds_dir, dict_path = write_inputs(name, workdir)
    env = dict(os.environ, VPNCRYPT_FUZZ_TMP=str(workdir / "tmp"), PYTHONHASHSEED="0")
    if args.strict:
        env["VPNCRYPT_FUZZ_STRICT"] = "1"
    if args.sabotage:
        env["VPNCRYPT_FUZZ_SABOTAGE"] = args.sabotage
    engine = args.engine
    if engine == "auto":
        try:
            import atheris  # noqa: F401

            engine = "atheris"
        except ImportError:
            engine = "hypothesis"
    seconds = args.seconds
    if engine == "atheris":
        opts = [f"-max_total_time={int(seconds)}", f"-artifact_prefix={artifacts}/",
                f"-max_len={MAX_LEN[name]}", "-timeout=30", "-print_final_stats=1"]
        if args.runs:
            opts.append(f"-runs={args.runs}")
        if dict_path:
            opts.append(f"-dict={dict_path}")
        given = {o.split("=", 1)[0] for o in passthrough}
        opts = [o for o in opts if o.split("=", 1)[0] not in given] + passthrough
        cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", name, "--", *opts,
               str(corpus), str(seeds_dir)]
        m = re.search(r"-max_total_time=(\d+)", " ".join(opts))
        seconds = float(m.group(1)) if m else seconds
    else:
        cmd = [sys.executable, str(Path(__file__).resolve()), "--worker-hypothesis", name,
               "--seconds", str(seconds), "--artifacts", str(artifacts)]
        if args.runs:
            cmd += ["--runs", str(args.runs)]
    start = time.monotonic()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env,
                            cwd=str(workdir), start_new_session=True, text=True,
                            errors="replace")
    inputs, crashes, known, hang = 0, [], {}, False
    deadline = start + seconds + 120
    log_tail = []
    try:
        for line in proc.stdout:
            if args.verbose:
                sys.stdout.write(line)
            log_tail.append(line)
            del log_tail[:-400]
            if m := re.match(r"#(\d+)\s", line):
                inputs = max(inputs, int(m.group(1)))
            elif m := re.match(r"Done (\d+) runs", line):
                inputs = max(inputs, int(m.group(1)))
            elif m := re.match(r"stat::number_of_executed_units: (\d+)", line):
                inputs = max(inputs, int(m.group(1)))
            elif m := re.search(r"Test unit written to (\S+)", line):
                crashes.append(m.group(1))
            elif m := re.match(r"FUZZ-KNOWN (\S+) count=(\d+)", line):
                known[m.group(1)] = max(known.get(m.group(1), 0), int(m.group(2)))
            if time.monotonic() > deadline:
                hang = True
                break
    finally:
        if hang or proc.poll() is None:
            try:
                proc.wait(timeout=0 if hang else 30)
            except subprocess.TimeoutExpired:
                hang = True
            if hang:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
    elapsed = time.monotonic() - start
    rc = proc.returncode
    failed = bool(crashes) or hang or rc != 0
    if failed and not args.verbose:
        sys.stdout.write("".join(log_tail[-150:]))
    if not args.keep:
        shutil.rmtree(workdir, ignore_errors=True)
    result = {"target": name, "engine": engine, "inputs": inputs, "seconds": round(elapsed, 1),
              "crashes": len(crashes) + (1 if failed and not crashes else 0),
              "known": known, "artifacts": crashes, "rc": rc, "hang": hang}
    known_text = ",".join(f"{k}:{v}" for k, v in sorted(known.items())) or "-"
    print(f"FUZZ-RESULT target={name} engine={engine} inputs={inputs} seconds={elapsed:.1f} "
          f"crashes={result['crashes']} known={known_text} "
          f"artifacts={','.join(crashes) or '-'}" + (" HANG" if hang else ""), flush=True)
    return result


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["--worker"]:
        name, rest = argv[1], argv[2:]
        worker_atheris(name, [a for a in rest if a != "--"])
        return 0
    if argv[:1] == ["--worker-hypothesis"]:
        p = argparse.ArgumentParser()
        p.add_argument("target")
        p.add_argument("--seconds", type=float)
        p.add_argument("--runs", type=int)
        p.add_argument("--artifacts", type=Path)
        a = p.parse_args(argv[1:])
        worker_hypothesis(a.target, a.seconds, a.runs, a.artifacts)
        return 0
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("target", nargs="?", help="one of: " + ", ".join(TARGET_NAMES) + ", all")
    p.add_argument("--seconds", type=float, default=60, help="per target (default 60)")
    p.add_argument("--runs", type=int, help="stop after this many inputs")
    p.add_argument("--corpus", help="directory keeping the evolving corpus (all: DIR/TARGET)")
    p.add_argument("--artifacts", help="where crash reproducers go (default fuzz/crashes/)")
    p.add_argument("--engine", choices=("auto", "atheris", "hypothesis"), default="auto")
    p.add_argument("--strict", action="store_true",
                   help="known (reported) bugs crash too instead of being counted")
    p.add_argument("--sabotage", help="break the product on purpose (harness self-test)")
    p.add_argument("--repro", nargs="+", metavar="FILE", help="run these inputs once and exit")
    p.add_argument("--keep", action="store_true", help="keep the work directory")
    p.add_argument("-v", "--verbose", action="store_true", help="show libFuzzer's output")
    p.add_argument("--list", action="store_true")
    args, passthrough = p.parse_known_args(argv)
    passthrough = [a for a in passthrough if a != "--"]
    if args.list:
        print("\n".join(TARGET_NAMES))
        return 0
    if args.target not in TARGET_NAMES + ["all"]:
        p.error(f"unknown target {args.target!r}")
    bad = [a for a in passthrough if not a.startswith("-")]
    if bad:
        p.error(f"unexpected arguments {bad}")
    if args.repro:
        if args.strict:
            os.environ["VPNCRYPT_FUZZ_STRICT"] = "1"
        if args.sabotage:
            os.environ["VPNCRYPT_FUZZ_SABOTAGE"] = args.sabotage
        return repro(args.target, args.repro)
    names = TARGET_NAMES if args.target == "all" else [args.target]
    results = [run_target(n, args, passthrough) for n in names]
    if len(results) > 1:
        total = sum(r["inputs"] for r in results)
        print(f"FUZZ-TOTAL inputs={total} crashes={sum(r['crashes'] for r in results)}")
    return 1 if any(r["crashes"] for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
