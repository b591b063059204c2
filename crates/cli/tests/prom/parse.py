"""Parses a Prometheus text exposition (stdin) with prometheus_client's own parser and prints
its families and samples as JSON: {"families": {name: [type, help]}, "samples": [[name,
labels, value], ...]}. A malformed exposition makes the parser raise (exit status 1)."""
import json
import sys

from prometheus_client.parser import text_string_to_metric_families

families, samples = {}, []
for fam in text_string_to_metric_families(sys.stdin.read()):
    if fam.name in families:
        raise SystemExit(f"family {fam.name} appears twice")
    families[fam.name] = [fam.type, fam.documentation]
    for s in fam.samples:
        samples.append([s.name, s.labels, s.value])
json.dump({"families": families, "samples": samples}, sys.stdout)
