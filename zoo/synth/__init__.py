"""DESIGNER data synthesis (arXiv:2508.12726; notes §3): the pipeline's stages, its LLM and embedding backends, and
the diversity metrics of its analysis."""

from importlib import import_module
from types import ModuleType

from zoo.errors import ConfigError, config_section


def require(module: str, purpose: str) -> ModuleType:
    """``module``, or a one-line error saying that ``purpose`` needs zoo's ``synth`` extra."""
    try:
        return import_module(module)
    except ImportError:
        raise ConfigError(f"{purpose} needs {module.split('.')[0]}: pip install 'zoo[synth]'") from None


def build(section: str, selector: str, default: str, registry: dict, settings: dict):
    """The backend that ``settings[selector]`` (default ``default``) names in ``registry`` (name -> (settings
    dataclass, class)), built from the rest of the ``section``'s settings; a wrong name or setting is one line."""
    settings = dict(settings)
    name = settings.pop(selector, default)
    if name not in registry:
        raise ConfigError(f"{section}.{selector} must be one of {', '.join(registry)}, got {name!r}")
    values, cls = registry[name]
    return cls(config_section(values, settings, section))


def device_of(setting: str) -> str:
    """A backend's ``device`` setting: ``auto`` is CUDA when there is one, else the CPU."""
    import torch

    return setting if setting != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
