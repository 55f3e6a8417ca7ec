"""One module per resource; each exports `routes` (core) and/or `internal_routes`."""
