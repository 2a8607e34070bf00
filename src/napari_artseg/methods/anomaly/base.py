"""What the three anomaly detectors share: parameters, fitted state, strict state loading.

A detector is built from a parameter dict (unknown keys and bad values raise
:class:`DetectorParamsError`), trained with the generator ``fit(images)`` and then
scores any image with ``score_map(image)``. All learned state travels as a flat dict
of tensors (:meth:`AnomalyDetector.state_tensors`), ready for safetensors.
"""

from __future__ import annotations

import abc
import math
from collections.abc import Mapping
from typing import Any, ClassVar

import torch

from ...errors import ArtSegError


class DetectorParamsError(ArtSegError, ValueError):
    """A detector parameter is unknown or has a bad value (one-line message)."""


class DetectorStateError(ArtSegError, ValueError):
    """A state tensor is missing, unexpected or of the wrong shape or type."""


class NotFittedError(ArtSegError, RuntimeError):
    """``score_map`` was called on a detector that has not finished ``fit``."""


#: A parameter check: (kind, lower bound or choices); kinds: int, float, bool, choice, ints.
ParamSpec = tuple[str, Any]


def _check_value(name: str, value: Any, spec: ParamSpec) -> Any:
    """Return ``value`` normalised to its kind, or raise DetectorParamsError."""
    kind, bound = spec
    bad = DetectorParamsError
    if kind == "bool":
        if not isinstance(value, bool):
            raise bad(f"parameter {name!r} must be true or false (got {value!r})")
        return value
    if kind == "choice":
        if value not in bound:
            raise bad(f"parameter {name!r} must be one of {', '.join(bound)} (got {value!r})")
        return value
    if kind == "ints":
        if not isinstance(value, (list, tuple)) or not value:
            raise bad(f"parameter {name!r} must be a non-empty list of integers (got {value!r})")
        return [_check_value(name, v, ("int", bound)) for v in value]
    if kind == "int":
        if isinstance(value, bool) or not isinstance(value, int) or value < bound:
            raise bad(f"parameter {name!r} must be an integer >= {bound} (got {value!r})")
        return int(value)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise bad(f"parameter {name!r} must be a finite number (got {value!r})")
    if value < bound:
        raise bad(f"parameter {name!r} must be >= {bound} (got {value!r})")
    return float(value)


def check_image(image: torch.Tensor, min_size: int = 32, what: str = "image") -> None:
    """Raise DetectorParamsError unless ``image`` is a finite float (1, h, w) tensor.

    Parameters
    ----------
    image : torch.Tensor
        The image to check.
    min_size : int
        Smallest allowed height and width.
    what : str
        Name used in the message.
    """
    if not isinstance(image, torch.Tensor) or image.ndim != 3 or image.shape[0] != 1:
        shape = tuple(image.shape) if isinstance(image, torch.Tensor) else type(image).__name__
        raise DetectorParamsError(f"{what} must be a (1, h, w) tensor (got {shape})")
    if min(image.shape[1:]) < min_size:
        raise DetectorParamsError(
            f"{what} must be at least {min_size} x {min_size} px (got {tuple(image.shape[1:])})"
        )
    if not image.is_floating_point():
        raise DetectorParamsError(f"{what} must be a float tensor (got {image.dtype})")
    if not bool(torch.isfinite(image).all()):
        raise DetectorParamsError(f"{what} contains NaN or infinite values")


class AnomalyDetector(abc.ABC):
    """Base class: parameter merging, device, seed, fitted flag and strict state loading.

    Subclasses set ``NAME``, ``DEFAULTS`` and ``SPECS`` and implement ``fit``,
    ``score_map``, ``_tensors`` and ``_load``.

    Parameters
    ----------
    params : dict, optional
        Overrides of :meth:`default_params`.
    device : torch.device or str
        Where training and scoring run.
    seed : int
        Seeds network initialisation, patch sampling and channel selection.
    """

    NAME: ClassVar[str] = ""
    DEFAULTS: ClassVar[dict[str, Any]] = {}
    SPECS: ClassVar[dict[str, ParamSpec]] = {}

    def __init__(
        self, params: dict | None = None, device: torch.device | str = "cpu", seed: int = 0
    ) -> None:
        self.params = self.merge_params(params)
        self.device = torch.device(device)
        if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
            raise DetectorParamsError(f"seed must be a non-negative integer (got {seed!r})")
        self.seed = seed
        self.fitted = False
        self.history: list[dict[str, float]] = []

    @classmethod
    def default_params(cls) -> dict:
        """The default parameters (a fresh, JSON-serialisable dict)."""
        return {k: list(v) if isinstance(v, list) else v for k, v in cls.DEFAULTS.items()}

    @classmethod
    def merge_params(cls, params: Mapping | None) -> dict:
        """Defaults updated by ``params``, every value checked.

        Raises
        ------
        DetectorParamsError
            For an unknown key (named) or a bad value.
        """
        merged = cls.default_params()
        for name, value in dict(params or {}).items():
            if name not in merged:
                raise DetectorParamsError(
                    f"unknown {cls.NAME} parameter {name!r}; known: {', '.join(sorted(merged))}"
                )
            merged[name] = value
        for name, spec in cls.SPECS.items():
            merged[name] = _check_value(name, merged[name], spec)
        cls._check_combination(merged)
        return merged

    @classmethod
    def _check_combination(cls, params: dict) -> None:
        """Checks that involve several parameters (subclasses override; none here)."""
        return

    def _require_fitted(self) -> None:
        if not self.fitted:
            raise NotFittedError(
                f"{self.NAME} detector is not fitted: run fit() to the end or load_state_tensors()"
            )

    # ------------------------------------------------------------------ state

    def state_tensors(self) -> dict[str, torch.Tensor]:
        """All learned state as CPU tensors (network weights with prefixes, statistics).

        Raises
        ------
        NotFittedError
            Before a completed fit or a load.
        """
        self._require_fitted()
        return {k: v.detach().to("cpu").contiguous().clone() for k, v in self._tensors().items()}

    def load_state_tensors(self, tensors: Mapping[str, torch.Tensor]) -> None:
        """Load what :meth:`state_tensors` returned; the detector is fitted afterwards.

        Raises
        ------
        DetectorStateError
            Naming the first missing, unexpected or wrong-shaped/typed tensor.
        """
        expected = self._expected_shapes(tensors)
        for name, (shape, dtype) in expected.items():
            if name not in tensors:
                raise DetectorStateError(f"{self.NAME} state: tensor {name!r} is missing")
            value = tensors[name]
            if not isinstance(value, torch.Tensor):
                raise DetectorStateError(f"{self.NAME} state: {name!r} is not a tensor")
            if tuple(value.shape) != tuple(shape):
                raise DetectorStateError(
                    f"{self.NAME} state: tensor {name!r} has shape {tuple(value.shape)}, "
                    f"expected {tuple(shape)}"
                )
            if value.dtype != dtype:
                raise DetectorStateError(
                    f"{self.NAME} state: tensor {name!r} has dtype {value.dtype}, expected {dtype}"
                )
            if value.is_floating_point() and not bool(torch.isfinite(value).all()):
                raise DetectorStateError(f"{self.NAME} state: tensor {name!r} is not finite")
        for name in tensors:
            if name not in expected:
                raise DetectorStateError(f"{self.NAME} state: unexpected tensor {name!r}")
        self._load(dict(tensors))
        self.fitted = True

    @abc.abstractmethod
    def _tensors(self) -> dict[str, torch.Tensor]:
        """Every learned tensor, by name."""

    @abc.abstractmethod
    def _expected_shapes(
        self, tensors: Mapping[str, torch.Tensor]
    ) -> dict[str, tuple[tuple[int, ...], torch.dtype]]:
        """Name -> (shape, dtype) every state tensor must have."""

    @abc.abstractmethod
    def _load(self, tensors: dict[str, torch.Tensor]) -> None:
        """Take the (checked) state tensors."""


def module_shapes(prefix: str, module: torch.nn.Module) -> dict:
    """``{prefix + name: (shape, dtype)}`` for every state_dict entry of ``module``."""
    return {f"{prefix}{k}": (tuple(v.shape), v.dtype) for k, v in module.state_dict().items()}


def module_tensors(prefix: str, module: torch.nn.Module) -> dict[str, torch.Tensor]:
    """``{prefix + name: tensor}`` for every state_dict entry of ``module``."""
    return {f"{prefix}{k}": v for k, v in module.state_dict().items()}


def load_module(prefix: str, module: torch.nn.Module, tensors: Mapping[str, torch.Tensor]) -> None:
    """Load the ``prefix``-ed entries of ``tensors`` into ``module`` (strict)."""
    state = {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}
    module.load_state_dict(state, strict=True)
