"""The server's memory over many decodes of different lengths (a script, not a test).

Decodes --decodes partials and finals of random lengths (1-15 s, cut from the shared
recordings played end to end) with the server's Transcriber (bundled tiny.en), and
prints the process's RSS every 40 decodes: once as the server runs (oneDNN's primitive
cache off, server/transcriber.py), once with oneDNN's default cache of 1024 primitives,
each in a fresh process. A flat line is a bounded server; the default cache grows with
every new window length.

    uv run python bench/server_memory.py [--decodes 120]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def rss_mb() -> int:
    pages = int(Path("/proc/self/statm").read_text().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") // 2**20


def child(decodes: int) -> None:
    sys.path[:0] = [str(ROOT / "tests"), str(ROOT / "tests" / "server")]
    import numpy as np

    from server_support import speech, transcriber

    names = ["jfk-44k1-stereo.wav", "ami-es2011a-16k.wav", "lj002-0020-22k05.wav",
             "lj002-0035-22k05.wav"]
    audio = np.concatenate([speech(n) for n in names] * 2)
    rng = np.random.default_rng(0)
    model = transcriber()
    line, started = [f"{rss_mb()}"], time.perf_counter()
    for i in range(1, decodes + 1):
        n = int(rng.uniform(1, 15) * 16000)
        start = int(rng.integers(len(audio) - n))
        model.transcribe(audio[start:start + n], final=bool(i % 2))
        if i % 40 == 0:
            line.append(f"{rss_mb()}")
    print(f"{' -> '.join(line)} MB ({decodes} decodes in {time.perf_counter() - started:.0f} s)")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--decodes", type=int, default=120)
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(args.decodes)
        return 0
    for label, cache in (("as the server runs (cache off)", None),
                         ("oneDNN's default cache", "1024")):
        env = dict(os.environ)
        if cache:
            env["ONEDNN_PRIMITIVE_CACHE_CAPACITY"] = cache
        print(f"{label}: ", end="", flush=True)
        subprocess.run([sys.executable, __file__, "--child", "--decodes", str(args.decodes)],
                       env=env, check=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
