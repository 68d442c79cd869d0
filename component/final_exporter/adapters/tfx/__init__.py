"""The TFX component: spec, component class and executor."""
