"""Files, figures, errors, CPU kernel settings and library noise, for every layer."""
