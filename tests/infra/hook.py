"""scripts/postprovision.py (the azd post-provision hook) as an importable module."""

from __future__ import annotations

import importlib.util
import sys
from types import ModuleType

from .bicep import ROOT

HOOK = ROOT / "scripts" / "postprovision.py"


def load_hook() -> ModuleType:
    module = sys.modules.get("postprovision")
    if module is None:
        spec = importlib.util.spec_from_file_location("postprovision", HOOK)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules["postprovision"] = module  # dataclasses look their module up while the class is built
        spec.loader.exec_module(module)
    return module
