#!/usr/bin/env python3
"""Validate the example pipelines against Microsoft's Azure Pipelines JSON schema.

Manual check (needs PyYAML and jsonschema):

    python3 crates/pipeline/tests/validate_examples.py [FILE.yml ...]

Without arguments it validates every *.yml under crates/pipeline/tests/fixtures/
and examples/*/ (except files whose name starts with `invalid-`) against
../shared/specs/azure-pipelines/service-schema.json (override with SCHEMA=path).
The Rust test `schema::examples_validate_against_microsoft_schema` runs this
script when python3 with both modules is available and skips otherwise.
"""
import glob
import json
import os
import sys

import jsonschema
import yaml

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.normpath(os.path.join(HERE, "..", "..", ".."))


def main(argv):
    schema_path = os.environ.get("SCHEMA") or os.path.join(
        ROOT, "..", "shared", "specs", "azure-pipelines", "service-schema.json"
    )
    with open(schema_path, encoding="utf-8-sig") as f:
        schema = json.load(f)
    files = argv[1:] or sorted(
        p for p in glob.glob(os.path.join(HERE, "fixtures", "*.yml"))
        + glob.glob(os.path.join(ROOT, "examples", "*", "*.yml"))
        if not os.path.basename(p).startswith("invalid-")
    )
    validator = jsonschema.Draft7Validator(schema)
    failed = 0
    for path in files:
        with open(path, encoding="utf-8") as f:
            doc = yaml.safe_load(f)
        errors = sorted(validator.iter_errors(doc), key=lambda e: list(e.path))
        if errors:
            failed += 1
            best = jsonschema.exceptions.best_match(errors)
            print(f"FAIL {path}: {best.message} at {list(best.absolute_path)}")
        else:
            print(f"ok   {path}")
    print(f"{len(files) - failed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
