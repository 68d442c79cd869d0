"""Names shared by the spec, the executor, the CLI and the export core.

This module imports nothing heavy, so the CLI and the core can use the same
names as the TFX component without importing TFX.
"""

# Input keys.
MODEL_KEY = 'model'
MODEL_BLESSING_KEY = 'model_blessing'
INFRA_BLESSING_KEY = 'infra_blessing'
MODEL_EVALUATION_KEY = 'model_evaluation'
EXAMPLES_KEY = 'examples'

# Output keys.
PUSHED_MODEL_KEY = 'pushed_model'

# The execution parameters are the fields of `ExportConfig` (core/config.py):
# `ExportConfig.field_names()`.

# PushedModel custom properties. The first three are the TFX Pusher's, so tools
# that read Pusher output keep working.
PUSHED_KEY = 'pushed'
PUSHED_DESTINATION_KEY = 'pushed_destination'
PUSHED_VERSION_KEY = 'pushed_version'
NOT_PUSHED_REASON_KEY = 'not_pushed_reason'
MANIFEST_SHA256_KEY = 'manifest_sha256'
TOTAL_BYTES_KEY = 'total_bytes'
FILE_COUNT_KEY = 'file_count'

# Lineage keys: in the manifest's `lineage` object and, flattened, in the
# PushedModel custom properties (lists and dicts as JSON strings).
EXPORT_NAME_KEY = 'export_name'
EXPORT_FORMAT_KEY = 'export_format'
SIGNATURE_NAMES_KEY = 'signature_names'
ASSETS_EXTRA_FILES_KEY = 'assets_extra_files'
SOURCE_MODEL_URI_KEY = 'source_model_uri'
SOURCE_MODEL_ID_KEY = 'source_model_id'
SOURCE_SAVED_MODEL_DIR_KEY = 'source_saved_model_dir'
MODEL_BLESSING_URI_KEY = 'model_blessing_uri'
MODEL_BLESSING_ID_KEY = 'model_blessing_id'
INFRA_BLESSING_URI_KEY = 'infra_blessing_uri'
INFRA_BLESSING_ID_KEY = 'infra_blessing_id'
MODEL_EVALUATION_URI_KEY = 'model_evaluation_uri'
MODEL_EVALUATION_ID_KEY = 'model_evaluation_id'
EVAL_RESULT_KEY = 'eval_result'
SERVING_FN_LINEAGE_KEY = 'serving_fn'
EXPORTER_VERSION_KEY = 'exporter_version'
PIPELINE_NAME_KEY = 'pipeline_name'
PIPELINE_RUN_ID_KEY = 'pipeline_run_id'
EXPORTED_AT_KEY = 'exported_at'
EXAMPLES_URI_KEY = 'examples_uri'
IDEMPOTENCY_KEY_KEY = 'idempotency_key'
SMOKE_TEST_LINEAGE_KEY = 'smoke_test'
PARITY_LINEAGE_KEY = 'prediction_parity'
WARMUP_LINEAGE_KEY = 'warmup_requests'
# The serving-signature guard (lifecycle/serving_contract.py): the diff against the
# served version, always; the breaks an `allow_breaking_changes` export let through.
SIGNATURE_DIFF_LINEAGE_KEY = 'serving_signature_diff'
SIGNATURE_BREAKS_LINEAGE_KEY = 'serving_signature_breaks'
# Who signed the export (storage/signing.py): in the sealed manifest, so it is signed too.
SIGNING_LINEAGE_KEY = 'signing'
# Recorded after publish (on the PushedModel and in the report, not in the sealed manifest).
LABELS_LINEAGE_KEY = 'version_labels'
RETENTION_LINEAGE_KEY = 'retention'
POST_PUBLISH_ERROR_KEY = 'post_publish_error'
# Recorded after the Vertex AI Model Registry upload.
VERTEX_MODEL_RESOURCE_KEY = 'vertex_model_resource_name'
VERTEX_MODEL_VERSION_ID_KEY = 'vertex_model_version_id'
VERTEX_MODEL_VERSION_ALIASES_KEY = 'vertex_model_version_aliases'
VERTEX_MANIFEST_LABEL_KEY = 'vertex_manifest_label'
VERTEX_CONSOLE_URL_KEY = 'vertex_console_url'

# Properties the TFX Evaluator and InfraValidator set on their blessings.
BLESSED_PROPERTY = 'blessed'
CURRENT_MODEL_PROPERTY = 'current_model'
CURRENT_MODEL_ID_PROPERTY = 'current_model_id'
# Set by InfraValidator when its blessing holds the model with warmup requests
# (`<blessing>/stamped_model/`), as the TFX Pusher reads it.
HAS_MODEL_PROPERTY = 'has_model'
STAMPED_MODEL_DIR = 'stamped_model'

# Files and folders.
ASSETS_EXTRA_DIR = 'assets.extra'
MANIFEST_FILENAME = 'export_manifest.json'
MANIFEST_RELPATH = f'{ASSETS_EXTRA_DIR}/{MANIFEST_FILENAME}'
# The OpenSSF Model Signing signature (a Sigstore bundle) over every other file; the
# standard's own default file name. TensorFlow Serving reads nothing else in assets.extra
# but its warmup file.
SIGNATURE_FILENAME = 'model.sig'
SIGNATURE_RELPATH = f'{ASSETS_EXTRA_DIR}/{SIGNATURE_FILENAME}'
# Staging folders and prefixes: hidden, non-numeric, never loaded by a model server.
STAGING_PREFIX = '.final-exporter-staging-'
LINEAGE_FILENAME = 'lineage.json'
REPORT_FILENAME = 'report.md'
SAVED_MODEL_PB = 'saved_model.pb'
SAVED_MODEL_PBTXT = 'saved_model.pbtxt'
# TensorFlow Serving reads warmup requests from this file at load.
WARMUP_FILENAME = 'tf_serving_warmup_requests'
WARMUP_RELPATH = f'{ASSETS_EXTRA_DIR}/{WARMUP_FILENAME}'

# TensorFlow Serving version labels (as lifecycle/model_config.py writes them): they
# travel in REST paths (/v1/models/<name>/labels/<label>) and gRPC fields.
LABEL_PATTERN = r'[A-Za-z][A-Za-z0-9_.-]{0,62}'
