"""Deploy a trained APSQ model to the RAE: the engine program, its export and the verified runner.

``program = apsq.deploy.export(model, example)`` (a pure function of the trained state),
``apsq.deploy.save(program, folder)`` / ``apsq.deploy.load(folder)``, and
``apsq.deploy.run(program, inputs, backend="golden" | "amaranth" | "verilator")``. See ``docs/deploy.md``.
"""

from apsq.deploy.export import export, load_trained, trace_host
from apsq.deploy.program import SCHEMA_VERSION, Manifest, Program, json_schema, load, save
from apsq.deploy.runner import BACKENDS, DeployMismatch, RunReport, host_model, run

__all__ = [
    "BACKENDS",
    "SCHEMA_VERSION",
    "DeployMismatch",
    "Manifest",
    "Program",
    "RunReport",
    "export",
    "host_model",
    "json_schema",
    "load",
    "load_trained",
    "run",
    "save",
    "trace_host",
]
