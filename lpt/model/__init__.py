"""The ResNet-ODE model: opening layer, residual steps Φ_n with stacked parameters, head and objective."""

from lpt.model.activations import ACTIVATIONS, get_activation, smoothrelu
from lpt.model.propagate import Step, propagate, propagate_states
from lpt.model.protocol import PARAM_PARTS, Model
from lpt.model.resnet import ModelError, Params, ResNet

__all__ = ["ACTIVATIONS", "Model", "ModelError", "PARAM_PARTS", "Params", "ResNet", "Step", "get_activation",
           "propagate", "propagate_states", "smoothrelu"]
