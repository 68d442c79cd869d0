"""FinalExporter as Kubeflow Pipelines v2 components, for pipelines written with the kfp DSL alone.

Two lightweight Python components run the export core the TFX executor runs
(`final_exporter.run_export`) and write the same record:

* `final_export`: the model as an `Input[Model]` artifact (or, without it, the
  stamped model of an InfraValidator blessing, as the TFX component does).
* `final_export_from_uri`: the model as a path parameter, for models that are
  not KFP artifacts (and the form `kfp.local` 2.5 can run: it refuses input
  artifacts).

Both take the blessing as artifacts (`model_blessing`, `infra_blessing`: a
blessing folder as TFX writes it, or any artifact whose metadata has
`blessed`) or as a boolean parameter produced by an upstream step (`blessed`),
optional `metrics` and `examples`, and every `final_exporter.ExportConfig`
parameter. They output `pushed_model` (the PushedModel properties as metadata,
its folder holding `export_manifest.json`, `lineage.json` and `report.md`),
`report` (a `Markdown` artifact the Kubeflow Pipelines UI and Vertex AI
Pipelines render), `registered_model` (a `VertexModel` for GCPC's
`ModelDeployOp`) and the parameters `pushed`, `version` and `destination` for
`dsl.If` downstream. Each component's docstring (`help(final_export)`) and
compiled spec describe every input and output.

The components run in the FinalExporter image (`Dockerfile`, `build.yaml`),
which has this package installed; `component_image()` says which image, and
`make_components(image)` makes them for another one.

Example:
    ```python
    from kfp import dsl
    from final_exporter.kfp import final_export

    @dsl.pipeline
    def serve(model_uri: str):
        model = dsl.importer(artifact_uri=model_uri, artifact_class=dsl.Model)
        verdict = evaluate(model=model.output)  # any step returning a bool
        final_export(
            model=model.output,
            blessed=verdict.output,
            name='penguin',
            export_base='gs://my-bucket/serving',
        )
    ```
"""

from final_exporter.adapters.kfp import (
    VertexModel,
    component_image,
    final_export,
    final_export_from_uri,
    make_components,
)

__all__ = [
    'VertexModel',
    'component_image',
    'final_export',
    'final_export_from_uri',
    'make_components',
]
