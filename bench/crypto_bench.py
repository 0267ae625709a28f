"""Per-packet AES-256-SIV cost: native core vs. its C ceiling, the two older sequences, reference.

For body sizes 64, 512 and 1420 bytes this measures the cost of sealing and opening one
packet (8-byte header, 16-byte tag, 20-byte associated data) along six paths:

* C ceiling: bench/siv_ceiling.c, impl "chain": a tight C loop over exactly the code of
  the native core (RFC 5297 SIV composed from CMAC and AES-CTR on two AES contexts per
  key that are never re-initialised: CMAC as CBC on an AES-256-CBC context whose chain
  runs on from message to message, the first block xored with the previous last block so
  the effective IV is zero, the RFC 4493 subkeys computed once, output through a 2048-byte
  stack scratch; CTR keystream from an AES-256-ECB context over counter blocks written by
  the code, xored 8 bytes at a time; S2V's first CMAC precomputed; the key's pthread mutex
  taken around each seal/open; CRYPTO_memcmp on the tag), into preallocated buffers.
  Built here with gcc -O2 -pthread ... -lcrypto.
* native (engine loop): vpncrypt._fast.bench_siv, the C-level siv_seal / siv_open the
  native packet loop (Engine.seal_into, Engine.on_datagram) calls, `count` times in one
  loop with the GIL released, the header and AD built per packet as the Engine builds
  them, into a preallocated buffer. This is what the daemon's data path pays per
  packet: DATA packets never go through Python there. The goal is judged on this figure.
* native (Python call): vpncrypt._fast.SivContext.seal / .open called from a Python loop
  (what a Python caller pays per packet on top: the call, argument parsing, buffer
  acquisition, the output bytes object, releasing and re-taking the GIL). Reported, not
  judged: the daemon uses it for control packets, and for DATA only when told to keep
  the Python loop (VPNCRYPT_LOOP=python).
* C evp-mac: the same C program, impl "evp-mac": the native core's previous sequence, the
  same SIV composition on an EVP_MAC CMAC context restarted per message
  (EVP_MAC_init(ctx, NULL, 0, NULL) / update / final) and an AES-256-CTR context re-IV'd
  per packet. Its ratio to the C ceiling is what the never-reinitialised contexts bought.
* C AES-SIV copy: the same C program, impl "copy": OpenSSL's "AES-256-SIV" cipher with a
  keyed template context copied per packet (EVP_CIPHER_CTX_copy, AD update, body update,
  final, tag ctrl): the sequence the native core ran before it composed SIV itself, the
  one native has been compared with historically. Its ratio to native is what composing
  SIV saved in all (it is a C floor for the old sequence, so the saving against the old
  native path was at least this).
* reference: vpncrypt.protocol.aead.ReferenceSivContext (cryptography's AESSIV plus the
  struct-built header and AD), or the same done inline if that module is missing.

Method: the process is pinned to one CPU (os.sched_setaffinity) and the C child runs on
the same core (taskset -c). Each repetition times a fixed batch of --count packets per
path and op; repetitions of all paths are interleaved so slow drift of a shared or
virtual machine hits them alike (per rep: the C program's three impls, then native
(Python call), native (engine loop) and reference, seal then open each). The figure
reported is the MEDIAN ns/packet over --reps repetitions (the fastest batch of each is
kept in the JSON as well). Batches are short on purpose: on a virtual machine whole
stretches of a second or more run slower, and many short interleaved batches keep those
from deciding the median. Ratios are given both as ratios of medians and as the median
of per-rep ratios ("paired": both batches of a pair run back to back, so a slow stretch
hits both). The 1-, 5- and 15-minute load averages are recorded before and after the
run: on a busy machine, trust the ratios more than the absolute times. Before timing,
native and reference packets are checked to be byte-identical and both paths to open
them, and bench_siv's last packet and plaintext to be SivContext's; the C program checks
(every run), at sizes 1-33, 64, 2047-2049 and the size timed, that its three impls
produce byte-identical packets and open each other's, and that a flipped bit (header,
tag, ciphertext) is rejected by all.

Note: the C ceiling and the native core use the system libcrypto; `cryptography`
wheels bundle their own OpenSSL, printed separately in the header.

Output: a Markdown table on stdout and bench/out/crypto.json.

    python3 bench/crypto_bench.py [--reps 31] [--count 2000] [--cpu N] [--check]

--check exits 1 if native (engine loop) is more than 15% slower than the C ceiling at
1420 B (seal or open, ratio of medians): the daemon's data path is the engine loop. The
Python-call figure is printed beside it but does not decide the check.
"""

import argparse
import datetime
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
OUT = HERE / "out"
C_SOURCE = HERE / "siv_ceiling.c"
C_BINARY = OUT / "siv_ceiling"

sys.path.insert(0, str(ROOT))

from harness import cpu_model  # noqa: E402  (bench/ is on sys.path: this script's folder)
from vpncrypt import _fast  # noqa: E402
from vpncrypt.protocol import wire  # noqa: E402

SIZES = (64, 512, 1420)
OPS = ("seal", "open")
# ceiling: C, SIV on never-reinitialised CBC/ECB contexts (what the native core runs);
# evpmac: C, SIV on an EVP_MAC CMAC + AES-CTR context restarted per packet (what it ran
# before); copy: C, OpenSSL's AES-SIV cipher with a template context copied per packet
# (what it ran before that).
# native: SivContext.seal/open called from Python; engine: the same C functions in the
# native packet loop's own way (_fast.bench_siv), no Python call per packet.
PATHS = ("ceiling", "native", "engine", "evpmac", "copy", "reference")
C_IMPLS = {"chain": "ceiling", "evp-mac": "evpmac", "copy": "copy"}
KEY = bytes((i * 37 + 11) & 0xFF for i in range(64))
CLIENT_ID = 7
SERVER_ID = 0x5EC0DE01
TIMESTAMP = 1_700_000_000
PTYPE = wire.Kind.DATA.value
GOAL_SIZE = 1420
GOAL_RATIO = 1.15


# -- the reference path ----------------------------------------------------------------

def reference_class():
    """(class, description): protocol.aead's ReferenceSivContext, or an inline equivalent."""
    try:
        from vpncrypt.protocol.aead import ReferenceSivContext
    except ImportError:
        pass
    else:
        return ReferenceSivContext, "vpncrypt.protocol.aead.ReferenceSivContext"

    from cryptography.exceptions import InvalidTag
    from cryptography.hazmat.primitives.ciphers.aead import AESSIV

    class InlineReference:
        def __init__(self, key, client_id, server_id):
            self._siv = AESSIV(key)
            self.client_id = client_id
            self.server_id = server_id

        def seal(self, ptype, timestamp, counter, body):
            ad = wire.associated_data(ptype, self.client_id, self.server_id, timestamp, counter)
            header = wire.pack_header(ptype, self.client_id, timestamp, counter)
            return header + self._siv.encrypt(bytes(body), [ad])

        def open(self, packet, timestamp):
            ptype, client_id, _, counter = wire.unpack_header(packet)
            ad = wire.associated_data(ptype, client_id, self.server_id, timestamp, counter)
            try:
                return self._siv.decrypt(bytes(packet[wire.HEADER_LEN:]), [ad])
            except InvalidTag:
                return None

    return InlineReference, "inline cryptography AESSIV + wire.py (aead.py not found)"


# -- timing ----------------------------------------------------------------------------

def time_seal(ctx, body, count):
    """ns/packet for `count` seals; the counter changes every packet, like real traffic."""
    seal = ctx.seal
    ts = TIMESTAMP
    ptype = PTYPE
    clock = time.perf_counter_ns
    t0 = clock()
    for i in range(count):
        seal(ptype, ts, i, body)
    return (clock() - t0) / count


def time_open(ctx, packet, count):
    """ns/packet for `count` opens of one valid packet."""
    open_ = ctx.open
    ts = TIMESTAMP
    clock = time.perf_counter_ns
    t0 = clock()
    for _ in range(count):
        open_(packet, ts)
    return (clock() - t0) / count


def time_engine(ctx, op, data, count):
    """ns/packet for `count` seals (data: the body) or opens (data: a packet) in the
    native loop's way: one C loop, GIL released, no Python call per packet."""
    ns, _ = _fast.bench_siv(ctx, op, data, TIMESTAMP, count, PTYPE)
    return ns / count


def time_ceiling(cpu, size, count):
    """One repetition of the three C impls on `cpu`: {(path, op): ns/packet}."""
    cmd = [str(C_BINARY), str(size), str(count), "1", "all"]
    if shutil.which("taskset"):
        cmd = ["taskset", "-c", str(cpu)] + cmd
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    if res.returncode != 0:
        raise SystemExit(f"siv_ceiling failed ({res.returncode}): {res.stderr.strip()}")
    result = {}
    for line in res.stdout.splitlines():
        rec = json.loads(line)
        result[C_IMPLS[rec["impl"]], rec["op"]] = rec["ns_per_packet"]
    if len(result) != len(C_IMPLS) * len(OPS):
        raise SystemExit(f"siv_ceiling printed {sorted(result)}, expected all impls x ops")
    return result


def build_ceiling():
    OUT.mkdir(parents=True, exist_ok=True)
    cc = os.environ.get("CC", "gcc")
    cmd = [cc, "-O2", "-Wall", "-Wextra", "-pthread", "-o", str(C_BINARY), str(C_SOURCE),
           "-lcrypto"]
    res = subprocess.run(cmd, capture_output=True, text=True)
    if res.returncode != 0:
        raise SystemExit(f"building the C ceiling failed: {' '.join(cmd)}\n{res.stderr}")
    return " ".join(cmd)


# -- machine description ---------------------------------------------------------------

def cryptography_openssl():
    try:
        import cryptography
        from cryptography.hazmat.backends.openssl import backend

        return f"cryptography {cryptography.__version__} ({backend.openssl_version_text()})"
    except Exception as exc:  # noqa: BLE001 - informational only
        return f"unavailable ({exc})"


def loadavg():
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def machine_info(cpu):
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "cpu_model": cpu_model(),
        "cpus_online": os.cpu_count(),
        "pinned_cpu": cpu,
        "kernel": platform.release(),
        "openssl": _fast.openssl_version(),
        "cryptography": cryptography_openssl(),
        "python": f"{platform.python_implementation()} {platform.python_version()}",
    }


# -- main ------------------------------------------------------------------------------

def pct(ratio):
    return f"{(ratio - 1) * 100:+.1f}%"


def paired(s, num, den):
    """Median over reps of num/den within the same rep."""
    return round(statistics.median(a / b for a, b in zip(s[num], s[den])), 4)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--reps", type=int, default=31, help="timed batches per path and op (median)")
    ap.add_argument("--count", type=int, default=2000, help="packets per timed batch")
    ap.add_argument("--cpu", type=int, default=None, help="CPU to pin to (default: last allowed)")
    ap.add_argument("--check", action="store_true",
                    help=f"exit 1 if native (engine loop) is more than "
                         f"{(GOAL_RATIO - 1) * 100:.0f}%% off the ceiling at {GOAL_SIZE} B")
    args = ap.parse_args(argv)
    if args.reps < 1 or args.count < 1:
        ap.error("--reps and --count must be >= 1")

    allowed = sorted(os.sched_getaffinity(0))
    cpu = allowed[-1] if args.cpu is None else args.cpu
    if cpu not in allowed:
        ap.error(f"--cpu {cpu} not in this process's CPU set {allowed}")
    os.sched_setaffinity(0, {cpu})

    started = time.monotonic()
    build_cmd = build_ceiling()
    ref_cls, ref_desc = reference_class()
    info = machine_info(cpu)
    info["reference"] = ref_desc
    info["ceiling_build"] = build_cmd
    info["loadavg_start"] = loadavg()

    print("# AES-256-SIV per-packet cost")
    print()
    for k in ("date", "cpu_model", "cpus_online", "pinned_cpu", "kernel", "openssl",
              "cryptography", "python", "reference", "loadavg_start"):
        print(f"- {k}: {info[k]}")
    print(f"- method: median of {args.reps} reps x {args.count} packets; "
          "header 8 + tag 16 bytes, AD 20 bytes")
    print()

    native = _fast.SivContext(KEY, CLIENT_ID, SERVER_ID)
    ref = ref_cls(KEY, CLIENT_ID, SERVER_ID)
    samples = {}
    for size in SIZES:
        body = bytes((i * 13 + 5) & 0xFF for i in range(size))
        packet = native.seal(PTYPE, TIMESTAMP, 42, body)
        if ref.seal(PTYPE, TIMESTAMP, 42, body) != packet:
            raise SystemExit(f"native and reference packets differ at {size} bytes")
        if native.open(packet, TIMESTAMP) != body or ref.open(packet, TIMESTAMP) != body:
            raise SystemExit(f"open did not round-trip at {size} bytes")
        # The engine-loop timing must run the same code: its last packet (counter 2) and
        # its plaintext must be the real ones.
        if (_fast.bench_siv(native, "seal", body, TIMESTAMP, 3, PTYPE)[1]
                != native.seal(PTYPE, TIMESTAMP, 2, body)
                or _fast.bench_siv(native, "open", packet, TIMESTAMP, 3, PTYPE)[1] != body):
            raise SystemExit(f"bench_siv's packets are not SivContext's at {size} bytes")

        s = {(path, op): [] for path in PATHS for op in OPS}
        # warm-up: first-call effects (allocator, caches, CPU frequency)
        time_seal(native, body, args.count // 4 + 1)
        time_engine(native, "seal", body, args.count // 4 + 1)
        time_seal(ref, body, args.count // 10 + 1)
        for _ in range(args.reps):
            for key, ns in time_ceiling(cpu, size, args.count).items():
                s[key].append(ns)
            s["native", "seal"].append(time_seal(native, body, args.count))
            s["native", "open"].append(time_open(native, packet, args.count))
            s["engine", "seal"].append(time_engine(native, "seal", body, args.count))
            s["engine", "open"].append(time_engine(native, "open", packet, args.count))
            s["reference", "seal"].append(time_seal(ref, body, args.count))
            s["reference", "open"].append(time_open(ref, packet, args.count))
        samples[size] = s

    rows = []
    for size in SIZES:
        for op in OPS:
            sm = {p: samples[size][p, op] for p in PATHS}
            med = {p: statistics.median(sm[p]) for p in PATHS}
            rows.append({
                "size": size,
                "op": op,
                "ceiling_ns": round(med["ceiling"], 1),
                "native_ns": round(med["native"], 1),       # Python call
                "engine_ns": round(med["engine"], 1),       # native (engine loop)
                "evpmac_ns": round(med["evpmac"], 1),
                "copy_ns": round(med["copy"], 1),
                "reference_ns": round(med["reference"], 1),
                "native_vs_ceiling": round(med["native"] / med["ceiling"], 4),
                "engine_vs_ceiling": round(med["engine"] / med["ceiling"], 4),
                "native_vs_engine": round(med["native"] / med["engine"], 4),
                "evpmac_vs_native": round(med["evpmac"] / med["native"], 3),
                "evpmac_vs_ceiling": round(med["evpmac"] / med["ceiling"], 3),
                "copy_vs_native": round(med["copy"] / med["native"], 3),
                "copy_vs_ceiling": round(med["copy"] / med["ceiling"], 3),
                "reference_vs_native": round(med["reference"] / med["native"], 3),
                "native_mb_s": round(size / med["native"] * 1e3, 1),
                "engine_mb_s": round(size / med["engine"] * 1e3, 1),
                "ceiling_mb_s": round(size / med["ceiling"] * 1e3, 1),
                "best_ns": {p: round(min(sm[p]), 1) for p in PATHS},
                # medians over reps of ratios within the same rep (the C batches and the
                # native batches run back to back, so a slow stretch of the machine hits both)
                "native_vs_ceiling_paired": paired(sm, "native", "ceiling"),
                "engine_vs_ceiling_paired": paired(sm, "engine", "ceiling"),
                "native_vs_engine_paired": paired(sm, "native", "engine"),
                "evpmac_vs_native_paired": paired(sm, "evpmac", "native"),
                "evpmac_vs_ceiling_paired": paired(sm, "evpmac", "ceiling"),
                "copy_vs_native_paired": paired(sm, "copy", "native"),
                "copy_vs_ceiling_paired": paired(sm, "copy", "ceiling"),
                "samples_ns": {p: [round(x, 1) for x in sm[p]] for p in PATHS},
            })

    print("| size (B) | op | C ceiling ns | native (engine loop) ns | engine loop vs ceiling "
          "| native (Python call) ns | Python call vs ceiling "
          "| C evp-mac ns | C evp-mac / C ceiling | native speed-up vs evp-mac "
          "| C AES-SIV copy ns | C copy / C ceiling | native speed-up vs copy "
          "| reference ns | reference / native | native MB/s |")
    print("|---:|:---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['size']} | {r['op']} | {r['ceiling_ns']:.0f} | {r['engine_ns']:.0f} "
              f"| {pct(r['engine_vs_ceiling'])} "
              f"| {r['native_ns']:.0f} | {pct(r['native_vs_ceiling'])} "
              f"| {r['evpmac_ns']:.0f} | {r['evpmac_vs_ceiling']:.2f}x "
              f"| {r['evpmac_vs_native']:.2f}x "
              f"| {r['copy_ns']:.0f} | {r['copy_vs_ceiling']:.2f}x "
              f"| {r['copy_vs_native']:.2f}x "
              f"| {r['reference_ns']:.0f} "
              f"| {r['reference_vs_native']:.2f}x | {r['native_mb_s']:.0f} |")
    print()
    print("C ceiling: SIV on never-reinitialised AES-CBC (CMAC chain) and AES-ECB (CTR "
          "keystream) contexts, the native core's code. Native (engine loop): the same core "
          "called in C the way the daemon's native packet loop calls it (_fast.bench_siv), "
          "GIL released, no Python call per packet. Native (Python call): SivContext.seal / "
          ".open from a Python loop; the columns \"native speed-up\", \"reference / native\" "
          "and \"native MB/s\" use this figure. C evp-mac: the same composition on "
          "an EVP_MAC CMAC and an AES-CTR context restarted per packet (the native core's "
          "previous sequence). C AES-SIV copy: OpenSSL's AES-256-SIV cipher, keyed template "
          "context copied per packet (the sequence before that). MB/s counts body bytes "
          "(10^6 B/s), one core, one packet per call.")
    print()
    print("Paired ratios (median of per-rep ratios):")
    print()
    print("| size (B) | op | engine loop vs ceiling | Python call vs ceiling "
          "| Python call vs engine loop | C evp-mac / C ceiling "
          "| native speed-up vs evp-mac | C copy / C ceiling | native speed-up vs copy |")
    print("|---:|:---|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['size']} | {r['op']} | {pct(r['engine_vs_ceiling_paired'])} "
              f"| {pct(r['native_vs_ceiling_paired'])} | {pct(r['native_vs_engine_paired'])} "
              f"| {r['evpmac_vs_ceiling_paired']:.2f}x | {r['evpmac_vs_native_paired']:.2f}x "
              f"| {r['copy_vs_ceiling_paired']:.2f}x | {r['copy_vs_native_paired']:.2f}x |")
    print()

    # The goal is judged on the engine loop: on the daemon's data path DATA packets are
    # sealed and opened by the native packet loop in C, never by a Python call. The
    # Python-call figure is what other callers pay and is reported beside it.
    goal = [r for r in rows if r["size"] == GOAL_SIZE]
    met = all(r["engine_vs_ceiling"] <= GOAL_RATIO for r in goal)
    call_met = all(r["native_vs_ceiling"] <= GOAL_RATIO for r in goal)

    def detail(key):
        return ", ".join(f"{r['op']} {pct(r[key])} (paired {pct(r[key + '_paired'])})"
                         for r in goal)

    verdict = "MET" if met else "NOT MET"
    print(f"Goal: native within {pct(GOAL_RATIO)} of the C ceiling at {GOAL_SIZE} B, judged "
          f"on native (engine loop), ratio of medians: {verdict} "
          f"({detail('engine_vs_ceiling')}).")
    print("  Why that figure: the daemon's data path is the native packet loop, which calls "
          "siv_seal / siv_open in C with the GIL released (Engine.seal_into, "
          "Engine.on_datagram); DATA packets never cost a Python call there (unless "
          "VPNCRYPT_LOOP=python keeps the Python loop).")
    print(f"  Reported, not judged: native (Python call), SivContext.seal / .open: "
          f"{detail('native_vs_ceiling')}; within {pct(GOAL_RATIO)}: "
          f"{'yes' if call_met else 'no'}. It adds "
          + ", ".join(f"{r['op']} {r['native_ns'] - r['engine_ns']:.0f} ns" for r in goal)
          + " per packet over the engine loop (the call, argument parsing, the output "
          "bytes, releasing and re-taking the GIL).")
    for name, key in (("evp-mac", "evpmac_vs_ceiling"), ("AES-SIV copy", "copy_vs_ceiling")):
        slower = [f"{r['size']} B {r['op']} ({r[key]:.2f}x)" for r in rows if r[key] < 1]
        if slower:
            print(f"Note: the C ceiling (chain) was NOT faster than the C {name} sequence at "
                  + ", ".join(slower))
    info["loadavg_end"] = loadavg()
    print(f"Load average (1/5/15 min): start {info['loadavg_start']}, "
          f"end {info['loadavg_end']} ({info['cpus_online']} CPUs online)")
    elapsed = time.monotonic() - started
    print(f"Run time: {elapsed:.1f} s")

    OUT.mkdir(parents=True, exist_ok=True)
    result = {
        "machine": info,
        "reps": args.reps,
        "count": args.count,
        "goal": {
            "size": GOAL_SIZE,
            "max_ratio": GOAL_RATIO,
            "judged_on": "engine",
            "why": "the daemon's data path is the native packet loop (siv_seal/siv_open "
                   "called in C, GIL released); DATA packets make no Python call there",
            "met": met,
            "ratio_of_medians": {r["op"]: r["engine_vs_ceiling"] for r in goal},
            "paired": {r["op"]: r["engine_vs_ceiling_paired"] for r in goal},
            "python_call": {
                "met": call_met,
                "ratio_of_medians": {r["op"]: r["native_vs_ceiling"] for r in goal},
                "paired": {r["op"]: r["native_vs_ceiling_paired"] for r in goal},
            },
        },
        "rows": rows,
        "elapsed_s": round(elapsed, 1),
    }
    (OUT / "crypto.json").write_text(json.dumps(result, indent=2) + "\n")
    print(f"JSON: {(OUT / 'crypto.json').relative_to(ROOT)}")
    return 1 if args.check and not met else 0


if __name__ == "__main__":
    sys.exit(main())
