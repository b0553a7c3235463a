"""Is a name a timm model? The check that configs, weights and the model factory share."""
from __future__ import annotations

import difflib
from functools import cache

import timm
from timm.models import is_model, split_model_name_tag

from trainer.errors import ConfigError

__all__ = ["check_model_name"]


@cache
def _all_models() -> tuple[str, ...]:
    return tuple(timm.list_models())


def check_model_name(name: str) -> None:
    """Raise :class:`ConfigError` unless ``name`` (optionally ``name.tag``) is a timm model."""
    base, _ = split_model_name_tag(name)
    if is_model(base):
        return
    close = difflib.get_close_matches(base, _all_models(), n=3, cutoff=0.6)
    hint = f" (did you mean {', '.join(close)}?)" if close else ""
    raise ConfigError(f"model.name is {name!r}, which is not a timm model{hint}; "
                      "list valid names with timm.list_models('pattern*')")
