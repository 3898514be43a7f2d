"""Files, figures, errors and CPU kernel settings, for every layer."""
