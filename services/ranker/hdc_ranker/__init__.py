"""hdc ranker: filters and scores candidate providers for a deployment and explains why."""
