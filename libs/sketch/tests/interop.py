#!/usr/bin/env python3
"""Interop check of modelperf-sketch against DataDog's sketches-py. Not part of `make test`.

Needs `pip install ddsketch protobuf` (checked with ddsketch 3.0.1 and protobuf 7.x); a virtual
environment is the easy way:

    python3 -m venv .local/ddsketch && .local/ddsketch/bin/pip install ddsketch protobuf
    .local/ddsketch/bin/python libs/sketch/tests/interop.py           # check both directions
    .local/ddsketch/bin/python libs/sketch/tests/interop.py --bless   # write python-v1.bin if missing

Rust -> Python: sketches-py decodes schemas/fixtures/sketch/latency-v1.bin (written by
modelperf-sketch) to the quantiles recorded in latency-v1.json (the `sketch` ones to 1e-9, the
`exact` ones to 1 %), and protobuf re-serialises the parsed message to the very same bytes (the
encoding is canonical proto3).

Python -> Rust: sketches-py builds a sketch of the same values and encodes it. The first such
encoding is python-v1.bin, frozen, which the Rust test `sketches_py_encoding_decodes_forever`
decodes forever. Each run also hands the fresh encoding to the Rust decoder (`cargo test -p
modelperf-sketch --test fixture` with MODELPERF_SKETCH_FOREIGN set; `--no-cargo` skips that).
"""

import json
import math
import os
import subprocess
import sys
import tempfile

from ddsketch import DDSketch
from ddsketch.pb.proto import DDSketchProto, pb

FIXTURES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "..", "schemas", "fixtures", "sketch")


def relative_difference(a, b):
    if a == b:
        return 0.0
    return abs(a - b) / max(abs(a), abs(b))


def check_quantiles(name, sketch, description):
    failures = []
    if sketch.count != description["count"]:
        failures.append(f"{name}: count {sketch.count} != {description['count']}")
    if sketch._zero_count != description["zero_count"]:
        failures.append(f"{name}: zero count {sketch._zero_count} != {description['zero_count']}")
    for expected in description["quantiles"]:
        q, exact, recorded = expected["q"], expected["exact"], expected["sketch"]
        got = sketch.get_quantile_value(q)
        status = "ok"
        if relative_difference(got, recorded) > 1e-9:
            status = "DIFFERS FROM RECORDED"
        if abs(got - exact) > 0.01 * exact * (1 + 1e-9):
            status = "OUTSIDE 1 %"
        print(f"  {name} q={q:<6} exact={exact:<12} recorded={recorded:<22} sketches-py={got:<22} {status}")
        if status != "ok":
            failures.append(f"{name}: q={q}: {status}")
    return failures


def main():
    bless = "--bless" in sys.argv[1:]
    with open(os.path.join(FIXTURES, "latency-v1.json")) as f:
        description = json.load(f)
    with open(os.path.join(FIXTURES, "latency-v1.bin"), "rb") as f:
        ours = f.read()
    failures = []

    print("Rust -> Python: latency-v1.bin decoded by sketches-py")
    message = pb.DDSketch.FromString(ours)
    if message.SerializeToString() != ours:
        failures.append("protobuf re-serialises latency-v1.bin differently: the encoding is not canonical")
    if message.mapping.interpolation != pb.IndexMapping.NONE or message.mapping.indexOffset != 0:
        failures.append("unexpected mapping: %s" % message.mapping)
    if not math.isclose(message.mapping.gamma, description["gamma"], rel_tol=1e-12):
        failures.append(f"gamma {message.mapping.gamma} != {description['gamma']}")
    failures += check_quantiles("rust", DDSketchProto.from_proto(message), description)

    print("Python -> Rust: the same values encoded by sketches-py")
    theirs = DDSketch(relative_accuracy=description["relative_accuracy"])
    for value, weight in description["values"]:
        theirs.add(value, weight)
    encoded = DDSketchProto.to_proto(theirs).SerializeToString()
    path = os.path.join(FIXTURES, "python-v1.bin")
    if not os.path.exists(path) and bless:
        with open(path, "wb") as f:
            f.write(encoded)
        print(f"  wrote {path} ({len(encoded)} bytes)")
    with open(path, "rb") as f:
        frozen = f.read()
    if encoded == frozen:
        print(f"  sketches-py encodes python-v1.bin byte for byte ({len(frozen)} bytes)")
    else:
        print(f"  sketches-py now encodes {len(encoded)} bytes, python-v1.bin has {len(frozen)}: comparing content")
    failures += check_quantiles("python", DDSketchProto.from_proto(pb.DDSketch.FromString(encoded)), description)

    if "--no-cargo" not in sys.argv[1:]:
        with tempfile.NamedTemporaryFile(suffix=".bin", delete=False) as f:
            f.write(encoded)
        command = ["cargo", "test", "-q", "-p", "modelperf-sketch", "--test", "fixture", "foreign_encoding"]
        print("  " + " ".join(command) + f"  (MODELPERF_SKETCH_FOREIGN={f.name})")
        result = subprocess.run(command, env={**os.environ, "MODELPERF_SKETCH_FOREIGN": f.name}, cwd=FIXTURES)
        os.unlink(f.name)
        if result.returncode != 0:
            failures.append("the Rust decoder rejected the fresh sketches-py encoding")

    if failures:
        print("FAILED:\n  " + "\n  ".join(failures))
        sys.exit(1)
    print("interop ok")


if __name__ == "__main__":
    main()
