"""hdc model runtime: serves DEEPaaS v2 modules and the Open Inference Protocol v2.

Kept free of imports on purpose: the demo models import `hdc_serving.models` and
`hdc_serving.progress` inside any DEEPaaS runtime, including the PyPI `deepaas` one.
"""

__version__ = "0.1.0"
