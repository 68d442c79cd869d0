"""Demo TFX pipeline that trains a penguin classifier and exports it with FinalExporter."""
