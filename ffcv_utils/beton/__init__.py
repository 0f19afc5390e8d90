"""The .beton format as the toolkit writes and reads it: the class-list sidecar and the header/schema check."""
