"""hdc-info-agent: runs at a site, collects what the site offers, publishes it to the registry."""
