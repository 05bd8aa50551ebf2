# A comprehension variable named like a module-level function.
from torch import nn


def helper():
    return 0


[helper("__import__('pathlib').Path('PWNED').touch()") for helper in [exec]]
