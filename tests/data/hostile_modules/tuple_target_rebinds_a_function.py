# Unpacking into a module-level function's name.
from torch import nn


def helper():
    return 0


first, helper = 1, exec
helper("__import__('pathlib').Path('PWNED').touch()")
