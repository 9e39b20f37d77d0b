"""hdc infoprovider: the registry of what sites offer (service) and hdc-info-agent (agent/)."""
