#!/usr/bin/env python3
"""Validates FHIR R4 (4.0.1) JSON Bundles: fhir.resources parses every resource against the R4
models (types, cardinalities, required elements, value sets of codes it binds, no unknown
element), then the Bundle invariants the models leave out are checked (bdl-3, bdl-7) along
with the rule that every urn:uuid reference of a transaction resolves to an entry's fullUrl.

Usage: validate.py BUNDLE.json...   (exit status 0: all valid; 1: the problems are printed)
       validate.py --self-check      (the installed models are R4, and a broken Bundle fails)
"""

import json
import sys

import fhir.resources
from fhir.resources.bundle import Bundle


def problems_of(data):
    try:
        bundle = Bundle.parse_obj(data)
    except Exception as e:  # pydantic.ValidationError and type errors alike
        return [str(e)]
    problems = []
    entries = bundle.entry or []
    if bundle.type in ("transaction", "batch"):
        for i, e in enumerate(entries):
            if e.request is None:
                problems.append(f"bdl-3: entry {i} of a {bundle.type} has no request")
    seen = set()
    for i, e in enumerate(entries):
        if e.fullUrl:
            if e.fullUrl in seen:
                problems.append(f"bdl-7: fullUrl {e.fullUrl} is not unique (entry {i})")
            seen.add(e.fullUrl)
    for ref in references(data):
        if ref.startswith("urn:uuid:") and ref not in seen:
            problems.append(f"reference {ref} resolves to no entry of the Bundle")
    return problems


def references(node):
    if isinstance(node, dict):
        for k, v in node.items():
            if k == "reference" and isinstance(v, str):
                yield v
            else:
                yield from references(v)
    elif isinstance(node, list):
        for v in node:
            yield from references(v)


def self_check():
    if fhir.resources.__fhir_version__ != "4.0.1":
        sys.exit(f"fhir.resources models FHIR {fhir.resources.__fhir_version__}, not R4 4.0.1")
    bad = {"resourceType": "Bundle", "type": "transaction", "entry": [{
        "fullUrl": "urn:uuid:0f8fad5b-d9cb-469f-a165-70867728950e",
        "resource": {"resourceType": "Observation", "code": {"text": "x"}},
        "request": {"method": "POST", "url": "Observation"}}]}
    if not problems_of(bad):
        sys.exit("an Observation without status passed validation")
    print(f"fhir.resources {fhir.resources.__version__}: FHIR {fhir.resources.__fhir_version__}")


def main(paths):
    if paths == ["--self-check"]:
        self_check()
        return 0
    failed = False
    for path in paths:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
        problems = problems_of(data)
        if problems:
            failed = True
            print(f"{path}: INVALID FHIR R4")
            for p in problems:
                print(f"  {p}")
        else:
            print(f"{path}: valid FHIR R4 {data.get('resourceType')} "
                  f"({len(data.get('entry', []))} entries)")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
