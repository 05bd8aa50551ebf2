# A for loop variable named like a module-level function.
from torch import nn


def helper():
    return 0


for helper in [exec]:
    helper("__import__('pathlib').Path('PWNED').touch()")
