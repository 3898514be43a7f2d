"""Training images: TFDS, the bundled digits, image folders and IDX files."""
