"""The writer: sources of images, image encoding, packing into a .beton, and its command line."""
