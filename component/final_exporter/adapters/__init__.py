"""The ways in: the TFX component, the Kubeflow-native components and the CLI.

Each turns its own inputs into an `ExportRequest` for `core.exporter.run_export`
and records the `ExportResult`; none of them exports anything itself.
"""
