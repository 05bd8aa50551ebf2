# A module-level function rebound after its definition.
from torch import nn


def helper():
    return 0


helper = exec
helper("__import__('pathlib').Path('PWNED').touch()")
