"""Running backstage: the service, the unit, status, several photos in flight."""
