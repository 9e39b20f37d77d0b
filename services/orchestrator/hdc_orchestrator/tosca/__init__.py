"""TOSCA handling: safe imports, input checks, function resolution, graph and requirements."""

from hdc_orchestrator.tosca.template import (
    MAX_TEMPLATE_BYTES,
    NodeInfo,
    TemplateError,
    ValidatedTemplate,
    validate_template,
)

__all__ = [
    "MAX_TEMPLATE_BYTES",
    "NodeInfo",
    "TemplateError",
    "ValidatedTemplate",
    "validate_template",
]
