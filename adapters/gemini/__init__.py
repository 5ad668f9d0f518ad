"""The Gemini wire format (generateContent), as a package: `client` for callers speaking Gemini, `upstream`
for a Gemini provider, `schema` for JSON Schema <-> Gemini Schema, `common` for what both sides read."""
