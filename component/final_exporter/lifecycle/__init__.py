"""The serving-side lifecycle after an export: version labels and retention."""
