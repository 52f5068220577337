"""The long fuzz run that does not stop at the first failure.

``make fuzz`` (hypothesis) stops at the first failing input and then spends
minutes shrinking it; for the numbers in tests/RELIABILITY.md every input
should be judged and every failure kept. This runner draws the same kinds of
mutation as ``test_fuzz.py`` (same seeds, same operations and argument
ranges) with :class:`random.Random`, checks each input with the same
:class:`~tests.fuzz._harness.Worker`, and writes counts plus every failure
with its seed and mutations to a JSON report (rewritten every 100 inputs)::

    .venv/bin/python -m tests.fuzz.long_run 10000 23 /tmp/fuzz.json
"""

from __future__ import annotations

import collections
import json
import logging
import random
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

from tests.fuzz import _mutate
from tests.fuzz._harness import CALLS, FAILURES, Worker
from tests.fuzz._mutate import ABSURD_VALUES, TRANSFER_SYNTAXES, Mutation
from tests.fuzz.test_fuzz import _generated_seeds, _real_seeds

_U32 = [0, 1, 2, 3, 7, 8, 0xFF, 0x1000, 0x7FFFFFFF, 0xFFFFFFFE, 0xFFFFFFFF]
_DROPS = [
    ("PixelData",),
    ("Rows",),
    ("BitsAllocated",),
    ("SamplesPerPixel", "PhotometricInterpretation"),
    ("PixelRepresentation", "BitsStored"),
]


def _draw(rng: random.Random) -> Mutation:
    """One mutation, each kind as likely as in ``test_fuzz._mutation``'s ``one_of``."""
    where = rng.uniform(0.0, 0.999)
    kind = rng.randrange(11)
    if kind == 0:
        pairs = [(k, v) for k, values in ABSURD_VALUES.items() for v in values]
        return Mutation("set", arg=rng.choice(pairs))
    if kind == 1:
        keyword = rng.choice(["Rows", "Columns", "SamplesPerPixel", "BitsAllocated"])
        return Mutation("rescale", arg=(keyword, rng.choice([0.5, 2.0])))
    if kind == 2:
        return Mutation("drop", arg=rng.choice(_DROPS))
    if kind == 3:
        return Mutation("truncate", where=where)
    if kind == 4:
        op = rng.choice(["flip_header", "flip_pixels"])
        return Mutation(op, where=where, arg=rng.randint(1, 255))
    if kind == 5:
        op = rng.choice(["insert_header", "insert_pixels"])
        return Mutation(op, where=where, arg=rng.randbytes(rng.randint(1, 16)))
    if kind == 6:
        op = rng.choice(["delete_header", "delete_pixels"])
        return Mutation(op, where=where, arg=rng.randint(1, 64))
    if kind == 7:
        op = rng.choice(["u32_header", "pixel_length", "fragment_length"])
        return Mutation(op, where=where, arg=rng.choice(_U32))
    if kind == 8:
        return Mutation("undefined_length", where=where)
    if kind == 9:
        return Mutation("duplicate_pixels")
    return Mutation("transfer_syntax", arg=rng.choice(TRANSFER_SYNTAXES))


def run(n_inputs: int, rng_seed: int, report: str) -> dict[str, Any]:
    """Check ``n_inputs`` mutated files; return (and write to ``report``) the counts."""
    warnings.simplefilter("ignore")
    logging.disable(logging.CRITICAL)
    rng = random.Random(rng_seed)
    directory = Path(tempfile.mkdtemp(prefix="torchdicom-fuzz-"))
    seeds = [(p.name, p.read_bytes()) for p in [*_generated_seeds(directory), *_real_seeds()]]
    counts: dict[str, collections.Counter[str]] = {c: collections.Counter() for c in CALLS}
    by_op: collections.Counter[str] = collections.Counter()
    reasons: collections.Counter[str] = collections.Counter()
    failures: list[dict[str, Any]] = []
    out: dict[str, Any] = {}
    max_elapsed = 0.0
    start = time.time()
    worker = Worker(timeout_s=120.0)

    def write(inputs: int) -> None:
        out.update(
            inputs=inputs,
            seeds=len(seeds),
            rng_seed=rng_seed,
            by_call={k: dict(v) for k, v in counts.items()},
            by_op=dict(by_op),
            stricter_reasons=dict(reasons.most_common(40)),
            max_elapsed_s=max_elapsed,
            failures=failures,
            wall_s=time.time() - start,
        )
        Path(report).write_text(json.dumps(out, indent=1, sort_keys=True))

    try:
        for i in range(1, n_inputs + 1):
            name, data = seeds[rng.randrange(len(seeds))]
            mutations = [_draw(rng) for _ in range(rng.randint(1, 3))]
            for m in mutations:
                by_op[m.op if m.op not in ("set", "rescale") else f"{m.op} {m.arg[0]}"] += 1  # type: ignore[index]
            path = directory / f"in{i:06d}.dcm"
            path.write_bytes(_mutate.apply(data, mutations))
            verdicts = worker.check(str(path))
            path.unlink()
            context = f"seed {name}, mutations: {_mutate.describe(mutations)}"
            if "crash" in verdicts or "harness" in verdicts:
                kind = "crash" if "crash" in verdicts else "harness"
                failures.append(
                    {"class": kind, "detail": str(verdicts)[-1500:], "context": context}
                )
                continue
            for call, v in verdicts.items():
                counts[call][v["class"]] += 1
                max_elapsed = max(max_elapsed, v["elapsed"])
                if v["class"] in FAILURES:
                    failures.append(
                        {
                            "call": call,
                            "class": v["class"],
                            "detail": str(v.get("detail"))[-1500:],
                            "context": context,
                        }
                    )
                elif v["class"] == "stricter":
                    reasons[f"{v['error_type']}: {v['reason'][:90]}"] += 1
            if i % 100 == 0:
                write(i)
        write(n_inputs)
    finally:
        worker.close()
    return out


if __name__ == "__main__":
    run(int(sys.argv[1]), int(sys.argv[2]), sys.argv[3])
