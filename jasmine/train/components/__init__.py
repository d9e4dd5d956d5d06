"""Components of the one training loop (one module each), behind one registry keyed by name."""

from jasmine.train.components import dynamics, idm, lam, mae, tokenizer  # noqa: F401  (each registers itself)
from jasmine.train.components.base import (
    COMPONENTS,
    Component,
    build_model,
    component_of,
    image_metrics,
    load_run,
    precision,
    to_unit,
)
from jasmine.train.components.dynamics import DynamicsComponent
from jasmine.train.components.idm import IDMComponent
from jasmine.train.components.lam import LAMComponent
from jasmine.train.components.mae import MAEComponent
from jasmine.train.components.tokenizer import TokenizerComponent

__all__ = [
    "COMPONENTS",
    "Component",
    "DynamicsComponent",
    "IDMComponent",
    "LAMComponent",
    "MAEComponent",
    "TokenizerComponent",
    "build_model",
    "component_of",
    "image_metrics",
    "load_run",
    "precision",
    "to_unit",
]
