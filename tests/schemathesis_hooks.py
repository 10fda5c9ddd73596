"""Schemathesis hooks for tests/e2e_openapi_fuzz.rs.

PUT /v1/tenants/{tenant}/announcements/{name} takes a WAV file under five media types; the
fuzzer serializes only application/octet-stream of them by itself. The audio types are sent
the same way, as raw bytes, so every media type the document lists is exercised.
"""

import schemathesis

schemathesis.serializer.alias(
    ["audio/wav", "audio/x-wav", "audio/wave", "audio/vnd.wave"],
    "application/octet-stream",
)
