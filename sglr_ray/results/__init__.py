"""The one results schema and its writer, and the console summary."""
