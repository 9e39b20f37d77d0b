"""hdc vrouter: WireGuard overlays joining private subnets across sites (controller side)."""
