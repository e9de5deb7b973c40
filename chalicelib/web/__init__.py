"""The HTTP edge: service errors to responses, query parsing, auth, the insight blueprint, the viewer page
and the OpenAPI description."""
