"""The published JSON Schema is the one the registry validates with (generated from it)."""

from __future__ import annotations

import copy
from datetime import timedelta

import jsonschema
import pytest
from hdc_infoprovider import synthetic
from hdc_infoprovider.report import SiteReport, site_report_schema, utcnow
from pydantic import ValidationError


def good() -> dict:
    return synthetic.site_report(3, utcnow() - timedelta(seconds=5), flavors=4, images=3)


def mutate(path: list, value=None, delete: bool = False) -> dict:
    doc = good()
    target = doc
    for key in path[:-1]:
        target = target[key]
    if delete:
        del target[path[-1]]
    else:
        target[path[-1]] = value
    return doc


BAD = [
    mutate(["bogus"], 1),
    mutate(["site", "id"], "has.dots"),
    mutate(["validity"], "3600"),
    mutate(["validity"], 5),
    mutate(["creationTime"], "2026-01-01T00:00:00"),  # no time zone
    mutate(["services", 0, "flavors", 0, "cpus"], -1),
    mutate(["services", 0, "flavors", 0, "gpus"], True),
    mutate(["services", 0, "flavors", 0, "extra"], "x"),
    mutate(["services", 0, "component"], delete=True),
    mutate(["services", 0, "failed_parts"], ["disks"]),
    mutate(["services", 0, "quotas", 0, "limits", "instances"], -5),
    mutate(["schema_version"], "2"),
]


def test_schema_is_valid_draft_2020_12_and_refuses_unknown_fields():
    schema = site_report_schema()
    jsonschema.Draft202012Validator.check_schema(schema)
    assert schema["additionalProperties"] is False
    assert schema["$id"].endswith("site-report-v1.json")


def test_good_report_passes_both():
    doc = good()
    jsonschema.Draft202012Validator(site_report_schema()).validate(doc)
    SiteReport.model_validate(doc)


@pytest.mark.parametrize("doc", BAD, ids=range(len(BAD)))
def test_bad_reports_fail_both(doc):
    validator = jsonschema.Draft202012Validator(
        site_report_schema(), format_checker=jsonschema.Draft202012Validator.FORMAT_CHECKER
    )
    assert list(validator.iter_errors(copy.deepcopy(doc))), "the published schema accepts it"
    with pytest.raises(ValidationError):
        SiteReport.model_validate(doc)
