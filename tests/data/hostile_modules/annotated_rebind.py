# An annotated assignment to a module-level function's name.
from torch import nn


def helper():
    return 0


helper: int = exec
helper("__import__('pathlib').Path('PWNED').touch()")
