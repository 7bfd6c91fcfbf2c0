"""Stage 1, read: a CSV export's dialect, its record-aligned chunks and rows (with line
numbers), and the mapping of an export's own columns onto documented paths."""
