"""The built-in pruning methods, one module per family.

Importing this package registers every method below in
:data:`xprune.pruning.PRUNING_METHODS` (each module applies the registry's
decorators to its own functions). :mod:`xprune.pruning._api` imports it once;
a new method is a new module here plus one import line, and the registry's
parametrised tests then cover it.
"""

from . import unstructured

# isort: split
# registration order is the order `xprune list` shows: unstructured first
from . import structured

# isort: split
from . import calibrated

# isort: split
from . import recurrent, transformer

__all__ = ["calibrated", "recurrent", "structured", "transformer", "unstructured"]
