"""The FinalExporter component spec; key names come from `final_exporter.common.keys`."""

from tfx.types import standard_artifacts
from tfx.types.component_spec import ChannelParameter, ComponentSpec, ExecutionParameter
from tfx.types.system_executions import Deploy

from final_exporter.common import keys
from final_exporter.core.config import ExportConfig


class FinalExporterSpec(ComponentSpec):
    """FinalExporter component spec.

    The parameters are the fields of `final_exporter.core.config.ExportConfig`, as
    primitive types (JSON string for `assets_extra`, 0/1 ints for flags) so the
    Kubeflow Pipelines v2 / Vertex AI compiler can pass them.
    """

    PARAMETERS = {
        name: ExecutionParameter(type=type_, optional=optional)
        for name, (type_, optional) in ExportConfig.property_types().items()
    }
    INPUTS = {
        # Optional only with an infra_blessing holding InfraValidator's stamped model.
        keys.MODEL_KEY: ChannelParameter(type=standard_artifacts.Model, optional=True),
        keys.MODEL_BLESSING_KEY: ChannelParameter(
            type=standard_artifacts.ModelBlessing, optional=True
        ),
        keys.INFRA_BLESSING_KEY: ChannelParameter(
            type=standard_artifacts.InfraBlessing, optional=True
        ),
        keys.MODEL_EVALUATION_KEY: ChannelParameter(
            type=standard_artifacts.ModelEvaluation, optional=True
        ),
        keys.EXAMPLES_KEY: ChannelParameter(type=standard_artifacts.Examples, optional=True),
    }
    OUTPUTS = {
        keys.PUSHED_MODEL_KEY: ChannelParameter(type=standard_artifacts.PushedModel),
    }
    TYPE_ANNOTATION = Deploy
