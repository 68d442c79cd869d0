"""Test helpers for the Kubeflow Pipelines v2 / Vertex AI tests."""
