"""Reports: metrics as pure functions on arrays, figures, tables, and the sweep report."""
