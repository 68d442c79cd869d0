"""The FinalExporter component spec; key names come from `final_exporter.keys`."""

from tfx.types import standard_artifacts
from tfx.types.component_spec import ChannelParameter, ComponentSpec, ExecutionParameter
from tfx.types.system_executions import Deploy

from final_exporter import keys


class FinalExporterSpec(ComponentSpec):
    """FinalExporter component spec.

    Parameters are primitive types only (JSON string for `assets_extra`, 0/1
    ints for flags) so the Kubeflow Pipelines v2 / Vertex AI compiler can pass
    them; `final_exporter.config.ExportConfig` parses them.
    """

    PARAMETERS = {
        keys.NAME_KEY: ExecutionParameter(type=str),
        keys.EXPORT_BASE_KEY: ExecutionParameter(type=str),
        keys.SERVING_FN_KEY: ExecutionParameter(type=str, optional=True),
        keys.ASSETS_EXTRA_KEY: ExecutionParameter(type=str, optional=True),
        keys.AS_TEXT_KEY: ExecutionParameter(type=int, optional=True),
        keys.REQUIRE_BLESSING_KEY: ExecutionParameter(type=int, optional=True),
        keys.COPY_METHOD_KEY: ExecutionParameter(type=str, optional=True),
    }
    INPUTS = {
        keys.MODEL_KEY: ChannelParameter(type=standard_artifacts.Model),
        keys.MODEL_BLESSING_KEY: ChannelParameter(
            type=standard_artifacts.ModelBlessing, optional=True
        ),
        keys.INFRA_BLESSING_KEY: ChannelParameter(
            type=standard_artifacts.InfraBlessing, optional=True
        ),
        keys.MODEL_EVALUATION_KEY: ChannelParameter(
            type=standard_artifacts.ModelEvaluation, optional=True
        ),
    }
    OUTPUTS = {
        keys.PUSHED_MODEL_KEY: ChannelParameter(type=standard_artifacts.PushedModel),
    }
    TYPE_ANNOTATION = Deploy
