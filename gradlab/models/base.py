"""What every model shares beyond its own forward and backward: the names and axes derived
from its parameter specs, and the hooks a model without extras leaves empty."""

from __future__ import annotations

import numpy as np

from ..compute import FLOAT32, Policy


class Model:
    shapes: dict[str, tuple[int, ...]]
    # PaLM's z-loss coefficient on the output softmax: only the transformer has the option;
    # the training loop and the divergence replay pass it to the task's loss for every model.
    z_loss = 0.0
    # The compute dtype's rounding at every op boundary (gradlab.compute); the builder sets it.
    compute: Policy = FLOAT32

    @property
    def param_names(self) -> list[str]:
        return list(self.shapes)

    @property
    def fan_in_axes(self) -> dict[str, int | None]:
        return {name: s.fan_in for name, s in self.param_specs.items()}

    def diagnostics(self, cache) -> dict[str, np.ndarray]:
        """The step's model-specific statistics, (V, layers) arrays by name; none here."""
        return {}
