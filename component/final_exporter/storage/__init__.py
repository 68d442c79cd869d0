"""Storage: where exports are staged, published, listed, verified and removed.

One interface, one module per store (a local folder tree, GCS, S3).
"""
